"""``python -m tests.support.kubeemu --port N --kubeconfig PATH``: run the emulator standalone."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from .server import KubeEmulator


async def _main(args: argparse.Namespace) -> None:
    emu = KubeEmulator(args.host, args.port, token=args.token, bookmark_interval=args.bookmark_interval)
    await emu.start()
    if args.kubeconfig:
        emu.write_kubeconfig(args.kubeconfig, namespace=args.namespace)
    print(f"kubeemu listening on {emu.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await emu.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.kubeemu", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--kubeconfig", help="write a kubeconfig (context 'emulator') to this path")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--token", default=None, help="require this bearer token")
    parser.add_argument("--bookmark-interval", type=float, default=60.0)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
