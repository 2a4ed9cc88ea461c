"""A real SeaweedFS for the test session, and helpers to point registry clones at it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from ggufops.artifacts import s3config
from ggufops.artifacts.s3server import S3Server, ServerInfo

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def configure_s3(repo: Path, info: ServerInfo, *, prefix: str | None = None,
                 remote: str = "models") -> Path:
    """Write the server's endpoint and credentials into `repo`/.dvc/config.local.

    With `prefix`, the remote's url becomes s3://<bucket>/<prefix>, so a test owns its keys.
    """
    values = info.dvc_local_values()
    if prefix:
        values["url"] = f"s3://{info.bucket}/{prefix}"
    return s3config.update_local_config(repo, remote, values)


def s3_client(info: ServerInfo) -> object:
    """A plain boto3 client for tests that tamper with objects behind ggufops' back."""
    return boto3.client(
        "s3",
        endpoint_url=info.endpoint,
        aws_access_key_id=info.access_key_id,
        aws_secret_access_key=info.secret_access_key,
        region_name="us-east-1",
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    """One SeaweedFS for the whole session: free port, temp state dir, `models` bucket."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "state")
    with server:
        yield server.info()


@pytest.fixture
def s3_registry(registry_repo: Path, s3_server: ServerInfo) -> Path:
    """A registry checkout whose remote `models` points at the session's SeaweedFS."""
    configure_s3(registry_repo, s3_server, prefix=f"t-{uuid.uuid4().hex[:12]}")
    return registry_repo


def write_tiny_gguf(
    path: Path,
    *,
    file_type: int | None = 1,
    context_length: int = 128,
    seed: int = 0,
    extra_bytes: int = 0,
    chat_template: str | None = None,
    tokens: list[str] | None = None,
) -> Path:
    """A small, valid llama-architecture GGUF (header keys + a few tensors), for tests.

    `seed` changes the tensor values (and so the bytes); `extra_bytes` adds a large tensor.
    """
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(context_length)
    writer.add_embedding_length(16)
    writer.add_block_count(1)
    writer.add_feed_forward_length(32)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(8)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(8)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens or ["a", "b", "c", "d", "e", "f", "g", "<s>"])
    writer.add_token_merges(["a b"])
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    dtype = np.float16 if file_type == 1 else np.float32
    writer.add_tensor("token_embd.weight", rng.standard_normal((8, 16)).astype(dtype))
    writer.add_tensor("output_norm.weight", np.ones(16, dtype=np.float32))
    if extra_bytes:
        writer.add_tensor("extra.weight", rng.integers(0, 255, extra_bytes, dtype=np.uint8)
                          .view(np.int8).reshape(1, -1))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
