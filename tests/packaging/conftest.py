from tests.support.kubeemu.pytest_plugin import kube, kube_kubeconfig

__all__ = ["kube", "kube_kubeconfig"]
