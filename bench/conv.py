"""Cost of conv growth statistics and decisions in units of one training step, measured in one run.

    python bench/conv.py [--batch 256] [--repeat 7] [--warmup 2] [--threads N] [--device cpu] [--norm NORM]

The network (issue 14's): 4 conv layers of 32 channels with 3x3 kernels (stride 1, padding 1) on
3x16x16 inputs, ReLU, then an average pool over the grid, a flatten and a linear head to 10 classes;
``--norm batch_norm`` adds ``norm: batch_norm`` to the conv nodes (for a dagrow whose spec takes norms;
otherwise the spec is refused and the bench says so). Growth: every conv node that can widen (c1,
c2, c3; c4 feeds the pool and keeps its channels), a new conv node on every conv edge, a new conv edge
between every pair of image nodes on the grid. A training step is a forward, a backward and an SGD
step (Adam for the decision, as bench/grow.py) at batch 256.

1. ``stats/train_step``: ``measure()`` of every supported site (``output_factors=False``, as the growth
   loop), a pass of its own. Target <= 3x.
2. ``recorded/train_step``: the extra time of a training step that records the same statistics with
   :class:`dagrow.recorder.Recorder`, (recorded step - step) / step. Target <= 1.5x.
3. ``decision/train_step``: one whole growth decision, the ``amplitude_factor`` strategy's plan over
   every site (statistics, proposals, line searches, actions; ``GrowthConfig()`` defaults: init tiny,
   one neuron). Target <= 20x.
4. ``memory``: how far the statistics pass raises the peak memory over how far a training step does.
   On CPU: each runs once in a fresh process (this script with ``--memory-child``; three processes,
   the median) after the network and the batch are built; the figure is the peak resident memory
   during the call above the resident memory before it (Linux: the peak is reset through
   ``/proc/self/clear_refs`` and read as ``VmHWM``; glibc mmaps large tensors, so freed memory
   leaves the process; ``ru_maxrss`` alone kept the peak of the imports). On CUDA:
   ``torch.cuda.max_memory_allocated`` above the memory allocated before the call. Target <= 2x.
5. GroMo 0.1.0 (``pip install gromo==0.1.0``): the same network as a chain of GroMo's
   ``RestrictedConv2dGrowingModule`` (new channels fan out through a 1x1 conv, as dagrow's centre tap),
   its statistics pass (every conv's S, M and gradient covariance, and the tensors that grow the
   channels between two convs) against dagrow's for the same sites (widen:c1..c3 with every conv's S,
   M and G), printed as GroMo's time / dagrow's; the line also says whether GroMo's S and M of the conv
   c1 -> c2 equal dagrow's on a float64 copy of the network. Without gromo a line says it was skipped.

Every time is the median of ``--repeat`` rounds in which the functions alternate (``median_times`` of
bench/stats.py), so that the ratios survive a machine whose load changes.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stats import median_times, recorded_step_fn, train_step_fn  # noqa: E402  (bench/stats.py)

import dagrow  # noqa: E402
from dagrow.config import GrowthConfig  # noqa: E402
from dagrow.features import (  # noqa: E402
    Geometry,
    base,
    feature_grid,
    feature_width,
    is_one,
    parse_geometry,
    patch_feature,
    transform,
)
from dagrow.graph import analyze  # noqa: E402
from dagrow.patch_moments import Layout, fast, largest_shift  # noqa: E402
from dagrow.patch_moments import multiply_adds as moment_cost  # noqa: E402
from dagrow.sites import enumerate_sites  # noqa: E402
from dagrow.spec import SpecError  # noqa: E402
from dagrow.stats import measure, requirements  # noqa: E402

TARGETS = {"stats": 3.0, "recorded": 1.5, "decision": 20.0, "memory": 2.0}


def cnn_spec(
    layers: int = 4, channels: int = 32, size: int = 16, inputs: int = 3, norm: str | None = None
) -> str:
    """img [inputs, size, size] -> c1 .. c<layers> (3x3 convs, ReLU) -> avg pool -> flatten -> out 10."""
    extra = f", norm: {norm}, bias: false" if norm else ""
    conv = "{type: conv2d, kernel: 3, padding: 1}"
    names = [f"c{i}" for i in range(1, layers + 1)]
    chain = ["img", *names]
    return "\n".join(
        [
            "version: 1",
            f"name: bench_cnn_{layers}x{channels}",
            f"inputs: {{img: {{shape: [{inputs}, {size}, {size}]}}}}",
            "nodes:",
            *(f"  {v}: {{channels: {channels}, activation: relu{extra}}}" for v in names),
            f"  pool: {{channels: {channels}, bias: false}}",
            f"  flat: {{width: {channels}, bias: false}}",
            "  out: {width: 10}",
            "edges:",
            *(f"  - {{from: {u}, to: {v}, op: {conv}}}" for u, v in zip(chain, chain[1:], strict=False)),
            f"  - {{from: {names[-1]}, to: pool, op: {{type: avg_pool, kernel: {size}}}}}",
            "  - {from: pool, to: flat, op: flatten}",
            "  - {from: flat, to: out}",
            "outputs: [out]",
            "growth: {widen: all, new_nodes: edges, new_edges: all}",
            "",
        ]
    )


def arithmetic_floor(spec, sites) -> tuple[float, float]:
    """Multiply-adds per sample of the statistics (a separate pass: forward, input gradients, one
    product per block, for a stride-1 patch pair the products of its spectra and its border terms
    (``dagrow.patch_moments.multiply_adds``) and each input's transform once; recorded: the products a
    training step does not already make) over those of a training step (forward, input and weight
    gradients of every parametric edge). Pairs counted one by one (the bench's statistics correlate
    all the nodes of the grid at once, which costs more multiply-adds in fewer, wider products)."""
    sg = analyze(spec)
    shapes = {v: tuple(s) for v, s in sg.shapes.items()}

    def rows(feature: str) -> int:
        grid = feature_grid(feature, shapes)
        return 1 if grid is None else grid[0] * grid[1]

    def edge_cost(e) -> int:
        if e.op.type == "conv2d":
            out = shapes[e.target]
            return out[0] * out[1] * out[2] * shapes[e.source][0] * Geometry.of(e.op).area
        if e.op.type == "linear":
            return math.prod(shapes[e.source]) * math.prod(shapes[e.target])
        return 0

    layers = sum(edge_cost(e) for e in spec.edges)
    backward = sum(edge_cost(e) for e in spec.edges if e.source not in spec.inputs)
    req = requirements(spec, sites, output_factors=False)
    width = {f: feature_width(f, shapes) for pair in req.pairs | req.grads for f in pair if f not in shapes}
    width |= {v: shapes[v][0] if len(shapes[v]) == 3 else math.prod(shapes[v]) for v in shapes}
    canonical = {tuple(sorted(p)) for p in req.pairs}

    transformed: dict[str, tuple[int, int]] = {}  # node -> the largest shift of its pairs

    def block_cost(a: str, b: str) -> int:
        ga, gb = parse_geometry(a), parse_geometry(b)
        if not (transform(a) or transform(b)) and fast(ga) and fast(gb):
            assert ga is not None and gb is not None  # dagrow.patch_moments: spectra and borders
            (ca, *grid_a), (cb, *grid_b) = shapes[base(a)], shapes[base(b)]
            out = ga.out_grid(tuple(grid_a))
            shift = largest_shift(ga, gb)
            for v in (base(a), base(b)):
                old = transformed.get(v, (0, 0))
                transformed[v] = (max(old[0], shift[0]), max(old[1], shift[1]))
            return moment_cost(ga, tuple(grid_a), ca, gb, tuple(grid_b), cb, out, base(a) == base(b))
        return rows(a) * width[a] * width[b]

    blocks = sum(block_cost(a, b) for a, b in canonical if not (is_one(a) or is_one(b)))
    for v, shift in transformed.items():  # each input is transformed once
        c, *grid = shapes[v]
        blocks += Layout.of([grid], shift).transform_cost(c)
    grads = {(s, w): rows(s) * width[s] * width[w] for s, w in req.grads if not is_one(s)}
    own = {
        (patch_feature(e.source, Geometry.of(e.op)), e.target) for e in spec.edges if e.op.type == "conv2d"
    }
    own |= {(e.source, e.target) for e in spec.edges if e.op.type == "linear"}
    separate = (layers + backward + blocks + sum(grads.values())) / (3 * layers)
    recorded = (blocks + sum(c for k, c in grads.items() if k not in own)) / (3 * layers)
    return separate, recorded


def peak_bytes(fn, device: str) -> int:
    """Peak bytes allocated while ``fn`` runs, above what was allocated before it (CUDA)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def rss_child(what: str, args) -> None:
    """In a fresh process: build the network and the batch, reset the peak resident memory (Linux:
    ``/proc/self/clear_refs``), run ``what`` (stats or step) once and print how far the peak (VmHWM)
    rose above the resident memory before the call, in bytes."""
    spec, model, x, y = setting(args)
    sites = enumerate_sites(spec, include_unsupported=False)
    fn = (
        (lambda: measure(model, [(x, y)], "cross_entropy", sites=sites, output_factors=False))
        if what == "stats"
        else train_step_fn(model, x, y)
    )
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = _status_kib("VmRSS")
    fn()
    print((_status_kib("VmHWM") - before) * 1024)


def peak_rss(what: str, args) -> int:
    import subprocess

    argv = [sys.executable, __file__, "--memory-child", what, "--batch", str(args.batch)]
    argv += ["--threads", str(args.threads)] if args.threads else []
    argv += ["--norm", args.norm]
    rises = []
    for _ in range(3):  # the median of three fresh processes
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        rises.append(int(done.stdout.strip().splitlines()[-1]))
    return sorted(rises)[1]


def setting(args):
    try:
        spec = dagrow.load_spec(cnn_spec(norm=None if args.norm == "none" else args.norm))
    except SpecError as err:
        sys.exit(f"--norm {args.norm}: this dagrow's spec refuses it ({str(err).splitlines()[0]})")
    torch.manual_seed(0)
    model = dagrow.compile(spec, seed=0, device=args.device)
    x = torch.randn(args.batch, *spec.inputs["img"].shape, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    return spec, model, x, y


def verdict(name: str, ratio: float, detail: str) -> str:
    target = TARGETS[name]
    ok = "OK" if ratio <= target else "MISS"
    return f"{name}/train_step = {ratio:.2f}x ({detail}) target <= {target:g}x: {ok}"


def gromo_network(args, norm: bool):
    """The bench network in GroMo 0.1.0's modules: a chain of ``RestrictedConv2dGrowingModule`` (3x3,
    padding 1, no bias, then [batch norm,] ReLU), each linked to the one before it (GroMo grows the
    channels between two convs; "restricted": the new channels' fan-out is a 1x1 conv, as dagrow's
    centre tap, where ``FullConv2dGrowingModule`` would fit the whole kernel), then the same pool,
    flatten and linear head."""
    from gromo.modules.conv2d_growing_module import RestrictedConv2dGrowingModule

    convs, previous, channels = [], None, 3
    for _ in range(4):
        post = torch.nn.Sequential(*([torch.nn.BatchNorm2d(32)] if norm else []), torch.nn.ReLU())
        conv = RestrictedConv2dGrowingModule(
            channels,
            32,
            3,
            padding=1,
            use_bias=False,
            input_size=(16, 16),
            post_layer_function=post,
            previous_module=previous,
            allow_growing=previous is not None,
            device=torch.device(args.device),
        )
        if previous is not None:
            previous.next_module = conv
        convs.append(conv)
        previous, channels = conv, 32
    head = torch.nn.Sequential(torch.nn.AvgPool2d(16), torch.nn.Flatten(), torch.nn.Linear(32, 10))
    return convs, torch.nn.Sequential(*convs, head).to(args.device)


def gromo_line(args, x, y, model, sync) -> str:
    """GroMo's statistics (every conv's S, M and gradient covariance, and for the convs after the
    first the tensors that grow the channels before them) against dagrow's for the same sites
    (widen:c1..c3 with every conv's S, M and G), timed alternately in one run."""
    try:
        import gromo  # noqa: F401
    except ImportError:
        return "GroMo 0.1.0: skipped (gromo does not import here; `pip install gromo==0.1.0` to try)"
    if args.norm not in ("batch_norm", "none"):
        return f"GroMo 0.1.0: skipped (the GroMo network of this bench has no {args.norm})"
    convs, net = gromo_network(args, args.norm == "batch_norm")
    net.train()

    def gromo_stats():
        for conv in convs:
            conv.init_computation()
        net.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        for conv in convs:
            conv.update_computation()
        for conv in convs:
            conv.reset_computation()

    sites = [s for s in enumerate_sites(dagrow.spec_of(model), include_unsupported=False) if s.id in WIDEN_C]

    def dagrow_stats():
        return measure(model, [(x, y)], "cross_entropy", sites=sites, output_factors=True)

    t = median_times({"gromo": gromo_stats, "dagrow": dagrow_stats}, args.repeat, args.warmup, sync)
    return (
        f"GroMo 0.1.0 / dagrow = {t['gromo'] / t['dagrow']:.2f}x (GroMo {t['gromo'] * 1e3:.1f} ms, dagrow "
        f"{t['dagrow'] * 1e3:.1f} ms: {', '.join(WIDEN_C)} and every conv's S, M and G, "
        f"RestrictedConv2dGrowingModule chain of the same network; {gromo_agreement(args)})"
    )


def gromo_agreement(args) -> str:
    """Whether GroMo's S and M of the conv c1 -> c2 equal dagrow's on the same float64 network and
    batch (16 samples; GroMo's M is the gradient of the mean loss, dagrow's n times it)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # GroMo builds some of its tensors in the default dtype
    try:
        return _gromo_agreement(args)
    finally:
        torch.set_default_dtype(default)


def _gromo_agreement(args) -> str:
    spec = dagrow.load_spec(cnn_spec(norm=None if args.norm == "none" else args.norm))
    model = dagrow.compile(spec, seed=0, dtype=torch.float64)
    convs, net = gromo_network(argparse.Namespace(device="cpu"), args.norm == "batch_norm")
    chain = ["img", "c1", "c2", "c3", "c4"]
    with torch.no_grad():
        for conv, u, v in zip(convs, chain, chain[1:], strict=False):
            conv.layer.weight.copy_(model.get_parameter(f"edges.{u}__{v}.weight"))
        net[4][2].weight.copy_(model.get_parameter("edges.flat__out.weight"))
        net[4][2].bias.copy_(model.get_parameter("nodes.out.bias"))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 16, 16, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=gen)
    for conv in convs:
        conv.init_computation()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    for conv in convs:
        conv.update_computation()
    sites = [s for s in enumerate_sites(spec, include_unsupported=False) if s.id in WIDEN_C]
    stats = measure(model, [(x, y)], "cross_entropy", sites=sites, output_factors=True)
    f = patch_feature("c1", Geometry.same(3))
    same = torch.allclose(convs[1].tensor_s(), stats.moment([f], [f]), rtol=1e-9, atol=1e-12)
    same &= torch.allclose(16 * convs[1].tensor_m(), stats.grad_moment([f], "c2"), rtol=1e-9, atol=1e-12)
    return (
        "S and M of c1 -> c2 equal dagrow's in float64" if same else "S or M of c1 -> c2 DIFFER from dagrow's"
    )


WIDEN_C = ("widen:c1", "widen:c2", "widen:c3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--norm", default="batch_norm", help="norm of the conv nodes: batch_norm (default), layer_norm, none"
    )
    parser.add_argument("--memory-child", choices=["stats", "step"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    if args.memory_child:
        rss_child(args.memory_child, args)
        return
    spec, model, x, y = setting(args)
    sites = enumerate_sites(spec, include_unsupported=False)
    batches = [(x, y)]
    strategy = GrowthConfig().make_strategy()

    def stats():
        return measure(model, batches, "cross_entropy", sites=sites, output_factors=False)

    def decide():
        return strategy.plan(model, (x, y), "cross_entropy", sites)

    decision = decide()
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"batch {args.batch}, norm {args.norm}"
    )
    print(f"{spec.name}: {len(sites)} supported sites: {', '.join(s.id for s in sites)}")
    print(f"the decision made {decision.figures.get('candidates')} line searches and chose {decision.site}")
    t = median_times(
        {
            "step": train_step_fn(model, x, y),
            "recorded": recorded_step_fn(model, x, y, sites, output_factors=False),
            "stats": stats,
        },
        args.repeat,
        args.warmup,
        sync,
    )
    step = t["step"]
    print(verdict("stats", t["stats"] / step, f"stats {t['stats'] * 1e3:.1f} ms, step {step * 1e3:.1f} ms"))
    extra = t["recorded"] - step
    print(verdict("recorded", extra / step, f"extra time of a recording step {extra * 1e3:.1f} ms"))
    separate, recorded = arithmetic_floor(spec, sites)
    print(
        f"floor: {separate:.2f}x separate pass, {recorded:.2f}x recorded (multiply-adds of the statistics "
        "/ of a training step: a stride-1 patch covariance costs 3 or 4 C_u C_v per frequency plus its "
        "border terms and the transforms, an unfolded one (C k^2)^2 per position, a conv C_out C k^2)"
    )
    t = median_times(
        {"step": train_step_fn(model, x, y, torch.optim.Adam), "decision": decide},
        max(1, args.repeat // 2),
        1,
        sync,
    )
    print(
        verdict(
            "decision",
            t["decision"] / t["step"],
            f"decision {t['decision'] * 1e3:.0f} ms, Adam step {t['step'] * 1e3:.1f} ms",
        )
    )
    if args.device.startswith("cuda"):
        step_fn = train_step_fn(model, x, y)
        step_fn()  # the optimizer's state exists before the measured step, as in training
        peaks = {"stats": peak_bytes(stats, args.device), "step": peak_bytes(step_fn, args.device)}
        how = "torch.cuda.max_memory_allocated above the memory allocated before the call"
    else:
        peaks = {k: peak_rss(k, args) for k in ("stats", "step")}
        how = "rise of the peak resident memory (VmHWM) of a fresh process over one call"
    mib = {k: v / 2**20 for k, v in peaks.items()}
    if peaks["step"] <= 0:
        print(f"memory: not measured (the training step raised the peak by {mib['step']:.1f} MiB; {how})")
    else:
        line = verdict(
            "memory",
            peaks["stats"] / peaks["step"],
            f"{mib['stats']:.1f} MiB vs {mib['step']:.1f} MiB, {how}",
        )
        print(line.replace("memory/train_step", "memory(stats)/memory(train_step)"))
    print(gromo_line(args, x, y, model, sync))


if __name__ == "__main__":
    main()
