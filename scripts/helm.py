"""Helm for flowgate's tests and local use: a small command-line driver over helm-sdkpy.

Run it through scripts/helm.sh, which provides the venv; see that file for the interface.
Output on stdout is JSON (lint, install, upgrade, uninstall, status) or YAML (template); an
error prints `helm <command>: <message>` on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from typing import Any

import helm_sdkpy as helm
import yaml

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
TEMPLATE_NAMESPACE = "flowgate-helm-template"


class Failure(Exception):
    """An error to report as one message and exit status 1."""


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merges `over` into a copy of `base` (maps merge, everything else replaces)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def user_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in args.values or []:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
        if not isinstance(doc, dict):
            raise Failure(f"{path}: values must be a mapping")
        values = merge(values, doc)
    for text in args.set_json or []:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise Failure(f"--set-json is not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise Failure("--set-json must be a JSON object")
        values = merge(values, doc)
    return values


def configuration(namespace: str) -> helm.Configuration:
    return helm.Configuration(namespace=namespace, kubeconfig=os.environ.get("KUBECONFIG") or None)


def summary(release: dict[str, Any]) -> dict[str, Any]:
    """The parts of a release worth printing: no chart archive, no live objects."""
    info = release.get("info") or {}
    return {
        "name": release.get("name"),
        "namespace": release.get("namespace"),
        "revision": release.get("version"),
        "status": info.get("status"),
        "description": info.get("description"),
        "notes": info.get("notes", ""),
        "values": release.get("config") or {},
        "manifest": release.get("manifest", ""),
    }


def api_server_host() -> str:
    """Host of the current context's API server in KUBECONFIG."""
    path = (os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")).split(os.pathsep)[0]
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    cluster = next(c for c in config["clusters"] if c["name"] == context["context"]["cluster"])
    return urllib.parse.urlparse(cluster["cluster"]["server"]).hostname or ""


def delete_kept(manifest: str, namespace: str) -> None:
    """Deletes what `helm uninstall` keeps (helm.sh/resource-policy: keep) after a render."""
    kept = []
    for doc in yaml.safe_load_all(manifest):
        annotations = ((doc or {}).get("metadata") or {}).get("annotations") or {}
        if annotations.get("helm.sh/resource-policy") == "keep":
            meta = doc["metadata"]
            kept.append((doc["kind"], meta["name"], meta.get("namespace", namespace)))
    if not kept:
        return
    if not shutil.which("kubectl"):
        print(f"helm template: kubectl not found; left behind: {kept}", file=sys.stderr)
        return
    for kind, name, ns in kept:
        target = ["-n", ns, kind.lower(), name]
        quiet = {"check": False, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        subprocess.run(["kubectl", "delete", *target, "--wait=false", "--ignore-not-found"], **quiet)
        if kind == "PersistentVolumeClaim":
            # What kube-controller-manager does once no pod uses the claim (none ever did); a
            # bare API server has no controller-manager, and a claim left Terminating would
            # block the next render of the same release.
            patch = '{"metadata":{"finalizers":null}}'
            subprocess.run(["kubectl", "patch", *target, "--type=merge", "-p", patch], **quiet)


async def cmd_lint(args: argparse.Namespace) -> int:
    result = await helm.Lint(configuration("default")).run(os.path.abspath(args.chart))
    messages = [
        {"severity": SEVERITY.get(m.get("Severity"), "UNKNOWN"), "path": m.get("Path")}
        for m in result.get("Messages") or []
    ]
    failed = [m for m in messages if m["severity"] in ("WARNING", "ERROR")]
    print(json.dumps({"ok": not failed, "messages": messages}, indent=2))
    if failed:
        # helm-sdkpy serialises Go error values as {}, so lint's message text is lost here.
        where = ", ".join(f"{m['severity']} in {m['path']}" for m in failed)
        raise Failure(f"{where} (helm-sdkpy drops lint's message text; `scripts/helm.sh template` shows render errors)")
    return 0


async def cmd_template(args: argparse.Namespace) -> int:
    host = api_server_host()
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise Failure(
            f"template renders by installing and uninstalling on the API server; refusing {host!r}, "
            "which is not on loopback (use the local API server: scripts/local-cluster.sh)"
        )
    namespace = args.namespace or TEMPLATE_NAMESPACE
    config = configuration(namespace)
    release = await helm.Install(config).run(
        args.release, os.path.abspath(args.chart), values=user_values(args), create_namespace=True, wait=False
    )
    manifest = release.get("manifest", "")
    try:
        await helm.Uninstall(config).run(args.release, wait=False)
    finally:
        delete_kept(manifest, namespace)
    sys.stdout.write(manifest)
    return 0


async def cmd_install(args: argparse.Namespace) -> int:
    release = await helm.Install(configuration(args.namespace)).run(
        args.release, os.path.abspath(args.chart), values=user_values(args), wait=False
    )
    print(json.dumps(summary(release), indent=2))
    return 0


async def cmd_upgrade(args: argparse.Namespace) -> int:
    release = await helm.Upgrade(configuration(args.namespace)).run(
        args.release,
        os.path.abspath(args.chart),
        values=user_values(args),
        wait=False,
        reuse_values=args.reuse_values,
        reset_values=args.reset_values,
    )
    print(json.dumps(summary(release), indent=2))
    return 0


async def cmd_uninstall(args: argparse.Namespace) -> int:
    result = await helm.Uninstall(configuration(args.namespace)).run(args.release, wait=False)
    print(json.dumps(summary(result.get("release") or {}), indent=2))
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    release = await helm.Status(configuration(args.namespace)).run(args.release)
    print(json.dumps(summary(release), indent=2))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/helm.sh", description="Helm through helm-sdkpy.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_values(s: argparse.ArgumentParser) -> None:
        s.add_argument("-f", "--values", action="append", metavar="FILE", help="values file (YAML or JSON)")
        s.add_argument("--set-json", action="append", metavar="JSON", help="values as a JSON object")

    def with_namespace(s: argparse.ArgumentParser, default: str | None = "default") -> None:
        s.add_argument("-n", "--namespace", default=default)

    s = sub.add_parser("lint", help="lint the chart with its own values")
    s.add_argument("chart")
    s.set_defaults(run=cmd_lint)

    s = sub.add_parser("template", help="render (install + uninstall on a loopback API server)")
    s.add_argument("chart")
    s.add_argument("--release", default="flowgate")
    with_namespace(s, default=None)
    with_values(s)
    s.set_defaults(run=cmd_template)

    s = sub.add_parser("install", help="install a release (no wait)")
    s.add_argument("release")
    s.add_argument("chart")
    with_namespace(s)
    with_values(s)
    s.set_defaults(run=cmd_install)

    s = sub.add_parser("upgrade", help="upgrade a release (no wait)")
    s.add_argument("release")
    s.add_argument("chart")
    with_namespace(s)
    with_values(s)
    s.add_argument("--reuse-values", action="store_true")
    s.add_argument("--reset-values", action="store_true")
    s.set_defaults(run=cmd_upgrade)

    s = sub.add_parser("uninstall", help="uninstall a release (no wait)")
    s.add_argument("release")
    with_namespace(s)
    s.set_defaults(run=cmd_uninstall)

    s = sub.add_parser("status", help="show a release")
    s.add_argument("release")
    with_namespace(s)
    s.set_defaults(run=cmd_status)
    return p


def main() -> int:
    args = parser().parse_args()
    try:
        return asyncio.run(args.run(args))
    except (helm.HelmError, Failure, OSError, yaml.YAMLError) as e:
        message = str(e).strip() or type(e).__name__
        print(f"helm {args.command}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
