"""modelrepo.testing.LocalS3: the local S3 endpoint behind the Option A tests and notebook."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from modelrepo.errors import LocalStackError
from modelrepo.testing import LocalS3


def test_upload_then_read_back_and_state_is_wiped_on_stop(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\n')
    (tmp_path / "m" / "1" / "w.bin").write_bytes(bytes(range(256)) * 64)
    with LocalS3() as s3:
        keys = s3.upload(tmp_path / "m", "s3://models/repo/m")
        assert keys == ["models/repo/m/1/w.bin", "models/repo/m/config.pbtxt"]
        assert s3.filesystem().cat("models/repo/m/1/w.bin") == bytes(range(256)) * 64
        s3.upload(tmp_path / "m", "s3://models/repo/again")  # an existing bucket is reused
    with LocalS3() as fresh:  # moto's state is process-wide: the last server's is gone
        assert fresh.filesystem().ls("") == []


def test_secret_manifest_is_a_valid_secret_without_plain_keys() -> None:
    s3 = LocalS3(access_key="AKIAX", secret_key="s3cr3t")
    secret = s3.secret_manifest("aws-creds", "ml")
    model = client.ApiClient()._ApiClient__deserialize(secret, "V1Secret")
    assert model.metadata.name == "aws-creds" and model.metadata.namespace == "ml"
    assert sorted(model.data) == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    assert "s3cr3t" not in str(secret)  # base64, as the API stores it


def test_misuse_is_a_clear_error() -> None:
    s3 = LocalS3()
    with pytest.raises(LocalStackError, match="not been started"):
        _ = s3.endpoint_url
    with pytest.raises(LocalStackError, match="not an S3 URL"):
        s3.upload(".", "models/repo")
    s3.stop()  # stopping a server that never started is harmless
