"""The examples in docs/ are real: every cluster file in docs/formats.md loads, the layout example reads."""

import re
import subprocess

import pytest

from planner.cluster import load_cluster
from planner.layout import read_layout

from conftest import HETERO, ROOT

FORMATS = ROOT / "docs" / "formats.md"


def ini_blocks(path):
    return re.findall(r"```ini\n(.*?)```", path.read_text(), flags=re.S)


def cluster_examples():
    blocks = [b for b in ini_blocks(FORMATS) if re.search(r"^\[cluster\]", b, flags=re.M)]
    assert len(blocks) >= 4
    return blocks


@pytest.mark.parametrize("index", range(4))
def test_cluster_examples_load(tmp_path, index):
    text = cluster_examples()[index]
    path = tmp_path / f"example{index}.ini"
    path.write_text(text)
    cluster = load_cluster(path)
    assert cluster.nodes()


def test_first_example_is_the_seed_cluster(tmp_path):
    path = tmp_path / "seed.ini"
    path.write_text(cluster_examples()[0])
    a, b = load_cluster(path), load_cluster(HETERO)
    assert [(n.name, n.gpu) for n in a.nodes()] == [(n.name, n.gpu) for n in b.nodes()]
    assert a.pair_links == b.pair_links and a.default_link == b.default_link


def test_layout_example_reads(tmp_path):
    block = next(b for b in ini_blocks(FORMATS) if b.lstrip().startswith("# layer-planner layout"))
    layout_dir = tmp_path / "layouts"
    layout_dir.mkdir()
    path = layout_dir / "hetero.ini"
    path.write_text(block.replace("cluster = ../profiles/hetero.ini", f"cluster = {HETERO}"))
    layout = read_layout(path)
    assert layout.cluster.model.id == "qwen3-14b"
    assert layout.placement.ranges["host2:1"] == (30, 40)
    assert layout.flows[("coordinator", "host1:0")] == pytest.approx(436.61)
    assert layout.figures["solver_status"] == "feasible"


@pytest.mark.parametrize("gpu, limits, row, rtt_bound", [
    ("rtx2080ti", (14, 11, 11), ("787", "72,023", "56", "27.5 ms", "183 ms"), 560.0),
    ("rtx4090", (32, 30, 30), ("1,701", "378,455", "256", "17.1 ms", "60.3 ms"), 1700.721),
])
def test_cost_model_worked_example_is_current(gpu, limits, row, rtt_bound):
    """docs/cost-model.md quotes these `planner show profiles/hetero.ini` figures: update it if this fails."""
    from planner.units import format_time

    cost = load_cluster(HETERO).cost(gpu)
    assert (cost.max_layers(), cost.max_layers(first=True), cost.max_layers(last=True)) == limits
    batch = cost.max_batch(10)
    step = cost.step_batch(10)
    shown = (f"{cost.capacity(10):,.0f}", f"{cost.kv_tokens(10):,}", str(batch),
             format_time(cost.decode_s(10, step)), format_time(cost.prefill_s(10, 1024)))
    assert shown == row
    assert cost.capacity(10, 0.1) == pytest.approx(rtt_bound, rel=1e-5)
    text = (ROOT / "docs" / "cost-model.md").read_text()
    assert all(value in text for value in row)


def test_hardware_table_matches_catalog(gpus):
    """Every GPU of profiles/gpus.ini has a row in docs/hardware.md with the catalog's figures."""
    text = (ROOT / "docs" / "hardware.md").read_text()
    for gpu_id, gpu in gpus.items():
        rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
                if line.startswith(f"| `{gpu_id}` |")]
        rows = [cells for cells in rows if len(cells) == 8]   # the main table, not the change log
        assert len(rows) == 1, gpu_id
        cells = rows[0]
        assert cells[2].startswith(f"{gpu.memory_bytes / 2**20:.0f} MiB"), (gpu_id, cells[2])
        assert cells[3] == f"{gpu.memory_bandwidth_bytes_per_s / 1e9:g} GB/s", (gpu_id, cells[3])
        assert cells[4] == f"{gpu.fp16_flops / 1e12:g}", (gpu_id, cells[4])
        assert cells[5] == f"{gpu.fp32_flops / 1e12:g}", (gpu_id, cells[5])
        assert cells[6] == ("yes" if gpu.bf16 else "no"), (gpu_id, cells[6])


# ---- the repository speaks for itself ---------------------------------------------------------------

SHIPPED = ("docs", "README.md", "planner", "simulator", "runtime", "benchmarks")
OUTSIDE = re.compile(r"/work/|\.\./shared|DESIGN\.md")  # notes only the project's authors have


def shipped_files() -> list:
    """The tracked files a user who clones the project gets in SHIPPED (every file there outside git)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", *SHIPPED], cwd=ROOT, capture_output=True,
                                check=True).stdout.decode().split("\0")
        files = [ROOT / name for name in listed if name]
    except (OSError, subprocess.CalledProcessError):
        files = [p for top in SHIPPED for p in ([ROOT / top] if (ROOT / top).is_file() else (ROOT / top).rglob("*"))
                 if p.is_file() and "__pycache__" not in p.parts]
    assert len(files) > 20, files
    return files


def test_no_shipped_file_points_outside_the_repository():
    offenders = []
    for path in shipped_files():
        if not path.exists():  # deleted in the work tree, not yet committed
            continue
        for number, line in enumerate(path.read_bytes().decode("utf-8", "replace").splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "cite files in the repository instead:\n" + "\n".join(offenders)


MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_relative_markdown_links_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken, checked = [], 0
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
        for target in MARKDOWN_LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or a link inside the page
            checked += 1
            if not (page.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert checked > 10 and not broken, broken
