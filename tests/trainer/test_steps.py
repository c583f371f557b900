"""The step catalogue: every step's shape and size, and the seed's tables reproduced exactly."""

from __future__ import annotations

import re

import pytest
import torch

from tests.conftest import SEED_ASSIGNMENT
from trainer.steps import REGISTRY, Separable, all_steps, count_params, get_step
from trainer.summary import summarize
from volume import ASSIGNMENT_SLUGS, STEP_SLUGS

EXPECTED_PARAMS = {
    "setup": 593_200,  # the seed's tables
    "skeleton": 194_884,
    "lighter": 20_954,
    "gap": 9_490,
}


def seed_tables() -> dict[str, str]:
    """The seed's torchsummary blocks, by step, in the seed's order of headings."""
    text = SEED_ASSIGNMENT.read_text()
    blocks = re.findall(r"### Model Summary:\n```\n(.*?)```", text, flags=re.S)
    return {
        slug: block for slug, block in zip(ASSIGNMENT_SLUGS, blocks, strict=True) if block.strip()
    }


def table_rows(text: str) -> list[str]:
    """The layer rows, totals and sizes, whitespace-normalised; rules and blanks dropped."""
    keep = []
    for line in text.splitlines():
        line = " ".join(line.split())
        if line and not set(line) <= {"-", "="}:
            keep.append(line)
    return keep


def test_registry_covers_the_contract_in_order() -> None:
    assert list(REGISTRY) == list(STEP_SLUGS)
    assert [s.slug for s in all_steps()] == list(STEP_SLUGS)


@pytest.mark.parametrize("slug", STEP_SLUGS)
def test_forward_shape_and_log_probabilities(slug: str) -> None:
    torch.manual_seed(0)
    model = get_step(slug).build().eval()
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize(("slug", "params"), EXPECTED_PARAMS.items())
def test_seed_parameter_counts(slug: str, params: int) -> None:
    assert count_params(get_step(slug).build()) == params


@pytest.mark.parametrize(("slug", "budget"), [("scheduler", 8_000), ("tiny", 3_000)])
def test_the_last_steps_meet_their_size_budgets(slug: str, budget: int) -> None:
    assert count_params(get_step(slug).build()) < budget


@pytest.mark.parametrize(
    ("c_in", "c_out", "groups", "params"),
    [(8, 16, 1, 9 * 8 + 8 * 16), (16, 20, 2, 9 * 16 + 16 * 20 // 2), (24, 28, 4, 9 * 24 + 24 * 7)],
)
def test_a_grouped_separable_spends_a_groupth_of_the_1x1(
    c_in: int, c_out: int, groups: int, params: int
) -> None:
    assert count_params(Separable(c_in, c_out, groups)) == params


@pytest.mark.parametrize("groups", [1, 2])
def test_every_output_reads_every_input_channel_through_grouped_layers(groups: int) -> None:
    """Two grouped separables in a row: the shuffle hands each group the other's channels, so
    every output channel depends on every input channel, as with one group."""
    torch.manual_seed(0)
    layers = torch.nn.Sequential(Separable(4, 4, groups), Separable(4, 4, groups))
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    out = layers(x)
    for c in range(4):
        (grad,) = torch.autograd.grad(out[0, c].sum(), x, retain_graph=True)
        reads = grad.abs().sum(dim=(0, 2, 3)) > 0
        assert bool(reads.all()), (c, reads.tolist())


def test_without_the_shuffle_groups_would_not_mix() -> None:
    """What the test above guards against: grouped 1x1s alone keep each group to itself."""
    torch.manual_seed(0)
    grouped = torch.nn.Sequential(
        torch.nn.Conv2d(4, 4, 1, groups=2, bias=False),
        torch.nn.Conv2d(4, 4, 1, groups=2, bias=False),
    )
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    (grad,) = torch.autograd.grad(grouped(x)[0, 0].sum(), x)
    assert (grad.abs().sum(dim=(0, 2, 3)) > 0).tolist() == [True, True, False, False]


@pytest.mark.parametrize(("before", "after"), [("lighter", "batchnorm"), ("batchnorm", "dropout")])
def test_designed_steps_change_one_thing(before: str, after: str) -> None:
    """batchnorm adds BatchNorm2d to lighter, dropout adds Dropout to batchnorm, nothing else."""
    types_before = [r.type for r in summarize(get_step(before).build(), before).layers]
    types_after = [r.type for r in summarize(get_step(after).build(), after).layers]
    added = {"batchnorm": "BatchNorm2d", "dropout": "Dropout"}[after]
    assert added not in types_before
    assert [t for t in types_after if t != added] == types_before


@pytest.mark.parametrize("slug", list(seed_tables()))
def test_summary_matches_the_seed_table(slug: str) -> None:
    ours = table_rows(summarize(get_step(slug).build(), slug).text)
    theirs = table_rows(seed_tables()[slug])
    assert ours[: len(theirs)] == theirs  # the seed's skeleton table stops before the sizes
    assert len(theirs) >= len(ours) - 4


def test_summary_reports_receptive_fields() -> None:
    rows = summarize(get_step("gap").build(), "gap").layers
    convs = [(r.name, r.receptive_field) for r in rows if r.type in ("Conv2d", "AvgPool2d")]
    assert convs == [
        ("Conv2d-1", 3),
        ("Conv2d-5", 5),
        ("Conv2d-9", 7),
        ("Conv2d-14", 8),  # after the max-pool: RF 8, jump 2
        ("Conv2d-18", 12),
        ("Conv2d-22", 16),
        ("Conv2d-26", 16),
        ("AvgPool2d-30", 28),
    ]
    # The first model pools with F.max_pool2d, invisible to the table but not to the RF.
    setup = {
        r.name: r.receptive_field for r in summarize(get_step("setup").build(), "setup").layers
    }
    assert setup["Conv2d-3"] == 10 and setup["Linear-5"] == 28


def test_summary_leaves_the_model_as_it_was() -> None:
    model = get_step("gap").build().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summarize(model, "gap")
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
