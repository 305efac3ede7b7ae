"""Job files in S3: `JOBWIRE_JOBS=s3://bucket/key` (seed 004 keeps its `jobs.csv` at
`s3://braingeneers/services/jobs.csv`). A `.csv` key is a CSV registry, anything else YAML.

Each file is read (GetObject) at start; a file that cannot be read stops the start with one line
naming its URL and what to check. While jobwire runs, the reload loop asks for each file's ETag
(HeadObject, nothing downloaded) on the cadence of the local files' mtime check, and reads a file
again only when its ETag changed. A HeadObject or GetObject that fails raises: the reload loop is
shown failing (logged, `/readyz`) and restarted with backoff, and the definitions in force stay.
The S3 calls themselves are `jobwire.sinks.s3log.S3` (the one module allowed aiobotocore).
"""

from __future__ import annotations

from jobwire.config import S3Url
from jobwire.jobfile import MAX_FILE_BYTES, DefinitionError, JobFileError
from jobwire.sinks.s3log import S3, S3Error, aws_missing

HINT = (
    "check the bucket and key in JOBWIRE_JOBS, jobwire's AWS endpoint, region and credentials "
    "(AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE or the instance role), and that they allow "
    "s3:GetObject on it"
)


class UnusableFile(S3Error):
    """The object was read but cannot be a job file (too large, not UTF-8)."""


class S3JobFiles:
    def __init__(self, urls: list[S3Url]) -> None:
        self.urls = urls
        self.s3 = S3()
        self.etags: dict[str, str] = {}
        self.texts: dict[str, str] = {}
        self._unapplied = False
        """A file was read again since `changed` last said so (a later file's error cut it short)."""

    def items(self) -> list[tuple[str, str]]:
        """(URL, text) of every file read, in the order of JOBWIRE_JOBS."""
        return [(str(u), self.texts[str(u)]) for u in self.urls if str(u) in self.texts]

    async def load(self) -> None:
        """At start: every file read. Raises JobFileError, one line per file that cannot be read."""
        if not S3.available():
            raise JobFileError(
                [DefinitionError(str(u), None, "", aws_missing("a job file in S3")) for u in self.urls]
            )
        errors: list[DefinitionError] = []
        for url in self.urls:
            try:
                await self._read(url)
            except UnusableFile as exc:
                errors.append(DefinitionError(str(url), None, "", _reason(exc)))
            except S3Error as exc:
                message = f"cannot read it from S3 ({_reason(exc)}): {HINT}"
                errors.append(DefinitionError(str(url), None, "", message))
        self._unapplied = False
        if errors:
            await self.close()
            raise JobFileError(errors)

    async def changed(self) -> bool:
        """Whether a file's ETag changed since it was read (then it is read again). Raises S3Error
        when S3 cannot be asked or the file cannot be read: the definitions in force stay."""
        for url in self.urls:
            etag = await self.s3.etag(url.bucket, url.key)
            if etag != self.etags.get(str(url)):
                await self._read(url)
        changed, self._unapplied = self._unapplied, False
        return changed

    async def _read(self, url: S3Url) -> None:
        etag, body = await self.s3.get(url.bucket, url.key, MAX_FILE_BYTES)
        self.etags[str(url)] = etag  # a file that cannot be used is not fetched again until it changes
        if len(body) > MAX_FILE_BYTES:
            raise UnusableFile(
                f"{url}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB, the most a job file may be: "
                "split the jobs into several files"
            )
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            where = f"byte offset {exc.start}"
            raise UnusableFile(f"{url}: not UTF-8 ({where}): save the file as UTF-8") from None
        self.texts[str(url)] = text
        self._unapplied = True

    async def close(self) -> None:
        await self.s3.close()


def _reason(exc: S3Error) -> str:
    """S3's error without the URL the message starts with (the line names it already)."""
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("s3://") and ": " in text else text


__all__ = ["S3JobFiles", "UnusableFile"]
