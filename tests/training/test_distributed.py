import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from tests.training.two_ranks import free_port, run_two_ranks
from training.artifact import export_artifact
from training.distributed import gather_with_grad, get_rank, get_world_size, rank_slice
from training.encoders.resnet import ResNet
from training.losses import nt_xent

BATCH_PER_RANK = 3
FEATURES = 5
TEMPERATURE = 0.3
RESNET = {"name": "resnet", "kwargs": {"in_channels": 1, "depth": 10, "width": 4, "small_stem": True}}


def loopback_environment() -> dict[str, str]:
    return {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}


def example_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    total = 2 * BATCH_PER_RANK
    return {
        "view_a": torch.randn(total, FEATURES, generator=generator, dtype=torch.float64),
        "view_b": torch.randn(total, FEATURES, generator=generator, dtype=torch.float64),
        "weight": torch.randn(4, FEATURES, generator=generator, dtype=torch.float64),
        "bias": torch.randn(4, generator=generator, dtype=torch.float64),
    }


def projection(inputs: dict[str, torch.Tensor]) -> nn.Linear:
    layer = nn.Linear(FEATURES, 4).double()
    with torch.no_grad():
        layer.weight.copy_(inputs["weight"])
        layer.bias.copy_(inputs["bias"])
    return layer


def nt_xent_worker(rank: int, out_dir: str) -> None:
    """Compute NT-Xent on this rank's slice through DDP and save loss and gradients."""
    inputs = example_inputs()
    layer = projection(inputs)
    model = nn.parallel.DistributedDataParallel(layer)
    rows = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
    # one forward pass over both views, as SimCLR does: (2B, F) -> (2B, 4)
    projections = model(torch.cat([inputs["view_a"][rows], inputs["view_b"][rows]]))
    view_a, view_b = projections.chunk(2)
    loss = nt_xent(view_a, view_b, TEMPERATURE)
    loss.backward()

    try:
        gather_with_grad(torch.zeros(rank + 1, 2))
        mismatch = ""
    except ValueError as error:
        mismatch = str(error)

    encoder = nn.parallel.DistributedDataParallel(ResNet(**RESNET["kwargs"]))
    if rank == 0:
        meta = {
            "name": "wrapped", "modality": "image", "architecture": RESNET, "embedding_dim": 32,
            "preprocessing": {"size": 8, "channels": 1, "mean": [0.5], "std": [0.5]}, "method": "simclr", "space": "wrapped",
        }
        export_artifact(os.path.join(out_dir, "wrapped"), encoder, meta)
    torch.save(
        {
            "loss": loss.detach(),
            "weight_grad": layer.weight.grad,
            "bias_grad": layer.bias.grad,
            "rank": get_rank(),
            "world_size": get_world_size(),
            "mismatch": mismatch,
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )


@pytest.fixture(scope="module")
def two_rank_dir(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("nt_xent")
    run_two_ranks(nt_xent_worker, str(out_dir))
    return out_dir


@pytest.fixture(scope="module")
def two_rank_results(two_rank_dir):
    return [torch.load(two_rank_dir / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


def single_process_reference() -> tuple[torch.Tensor, nn.Linear]:
    inputs = example_inputs()
    layer = projection(inputs)
    projections = layer(torch.cat([inputs["view_a"], inputs["view_b"]]))
    view_a, view_b = projections.chunk(2)
    loss = nt_xent(view_a, view_b, TEMPERATURE)
    loss.backward()
    return loss.detach(), layer


def test_nt_xent_two_ranks_loss_equals_one_rank(two_rank_results):
    expected, _ = single_process_reference()
    mean_loss = (two_rank_results[0]["loss"] + two_rank_results[1]["loss"]) / 2
    assert torch.allclose(mean_loss, expected, rtol=1e-10)


def test_nt_xent_two_ranks_gradients_equal_one_rank(two_rank_results):
    _, layer = single_process_reference()
    for result in two_rank_results:
        assert torch.allclose(result["weight_grad"], layer.weight.grad, rtol=1e-10)
        assert torch.allclose(result["bias_grad"], layer.bias.grad, rtol=1e-10)


def test_nt_xent_ranks_see_their_own_rank(two_rank_results):
    assert [result["rank"] for result in two_rank_results] == [0, 1]
    assert [result["world_size"] for result in two_rank_results] == [2, 2]


def test_gather_with_grad_rejects_mismatched_shapes_on_every_rank(two_rank_results):
    for result in two_rank_results:
        assert "same shape on every rank" in result["mismatch"]


def test_export_of_ddp_module_has_no_wrapper_prefix(two_rank_dir):
    from safetensors.torch import load_file

    from training.artifact import load_artifact

    names = list(load_file(two_rank_dir / "wrapped" / "weights.safetensors"))
    assert not [name for name in names if name.startswith("module.")]
    assert load_artifact(two_rank_dir / "wrapped").meta.name == "wrapped"


def test_gather_with_grad_is_identity_alone():
    tensor = torch.randn(4, 3, requires_grad=True)
    assert gather_with_grad(tensor) is tensor


def test_rank_slices_partition_global_batch():
    batch = torch.arange(10, 22)
    slices = [rank_slice(batch, rank, 3) for rank in range(3)]
    assert torch.equal(torch.cat(slices), batch)


def test_rank_slice_rejects_uneven_batch():
    with pytest.raises(ValueError, match="does not split evenly"):
        rank_slice(torch.arange(5), 0, 2)


def test_rank_slice_rejects_rank_out_of_range():
    with pytest.raises(ValueError, match="rank must be in"):
        rank_slice(torch.arange(4), 2, 2)


def test_torchrun_two_process_training_exports_loadable_artifact(tmp_path):
    from training.artifact import load_artifact

    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        "-m", "training.cli", "--method", "simclr", "--data", "digits", "--limit", "200",
        "--out", str(tmp_path / "models" / "ddp"), "--run-dir", str(tmp_path / "run"),
        "--epochs", "1", "--batch-size", "64", "--encoder-depth", "10", "--encoder-width", "4",
        "--device", "cpu", "--log-every", "1",
    ]
    completed = subprocess.run(
        command, cwd=tmp_path, env=loopback_environment(), capture_output=True, text=True, timeout=180
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 alone reports
    assert json.loads(lines[0])["artifacts"] == [str(tmp_path / "models" / "ddp")]
    assert "[rank 1]" not in completed.stderr.replace("WARNING [rank 1]", "")  # rank 1 logs warnings only

    artifact = load_artifact(tmp_path / "models" / "ddp")
    assert artifact.meta.training["world_size"] == 2
    assert artifact.meta.training["steps"] == 3  # 160 training samples: 64, 64, then 32
    with torch.no_grad():
        embeddings = artifact.encoder(torch.zeros(2, 1, 8, 8))
    assert embeddings.shape == (2, 32)
    assert len(list((tmp_path / "run").glob("checkpoint-*.pt"))) == 1
