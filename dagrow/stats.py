"""One instrumented forward/backward per batch that accumulates the moments every growth site needs.

Convention (DESIGN.md): the loss is a mean over samples, ``L = (1/n) sum_i l_i``; statistics use the
per-sample gradient ``g_v(x_i) = d l_i / d a_v = n dL/da_v(x_i)`` of each node's pre-activation, so no
figure depends on the batch size. With ``b_s`` the post-activation of a source node (the input itself
for an input) and ``"1"`` the constant feature, the accumulator keeps sums over samples of

- ``b_s b_t^T`` for the pairs of sources that some S or P block needs,
- ``b_s g_w^T`` for the (source, target) pairs that some M block needs,
- ``g_w g_w^T`` (the output-side factor G_w and the squared gradient norm),

and :class:`Statistics` divides by n and assembles blocks: ``moment(U, V) = (1/n) sum B_U B_V^T``,
``grad_moment(U, w) = (1/n) sum B_U g_w^T``. Memory does not depend on the number of batches.
Only the blocks the sites need are computed, one matrix product per block.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .compile import spec_of
from .features import (
    ONE,
    Geometry,
    base,
    feature_grid,
    feature_width,
    image_rows,
    is_one,
    node_grid,
    parse_geometry,
    transform,
)
from .features import rows as feature_rows
from .graph import analyze
from .losses import LOSSES as LOSSES  # re-exported: dagrow.stats.LOSSES
from .losses import LossFn, loss_function
from .norms import running_stats_kept
from .patch_moments import (
    Chunk,
    Correlations,
    Layout,
    correlate_jointly,
    fast,
    largest_shift,
    patch_gradient,
)
from .sites import Site, enumerate_sites, linear_sources


def first_device(values: dict[str, Tensor]) -> torch.device:
    return next(iter(values.values())).device


class StatsError(ValueError):
    """The statistics cannot be measured (non-finite data or loss, empty stream, bad batch)."""


@dataclass
class Requirements:
    """Which blocks to accumulate: source pairs, (source, target) pairs, the targets' squared gradient
    norms and, with ``output_factors``, their full G."""

    pairs: set[tuple[str, str]] = field(default_factory=set)
    grads: set[tuple[str, str]] = field(default_factory=set)
    targets: set[str] = field(default_factory=set)
    output_factors: bool = True

    def add_moment(self, xs: Sequence[str], ys: Sequence[str]) -> None:
        for x in xs:
            for y in ys:
                self.pairs.add((x, y))

    def add_grad(self, xs: Sequence[str], w: str) -> None:
        self.targets.add(w)
        for x in xs:
            self.grads.add((x, w))


def requirements(
    model_or_spec,
    sites: Iterable[Site] | None = None,
    *,
    all_nodes: bool = True,
    output_factors: bool = True,
) -> Requirements:
    """The blocks needed for ``sites`` (default: every supported site) and, with ``all_nodes``, for
    S_v, M_v and G_v of every node whose parametric incoming edges are measured (linear into a flat
    node, conv2d into an image node; G_v only with ``output_factors``; the squared gradient norm
    always)."""
    spec = model_or_spec if not isinstance(model_or_spec, nn.Module) else spec_of(model_or_spec)
    sg = analyze(spec)
    req = Requirements(output_factors=output_factors)
    sites = [s for s in (enumerate_sites(sg) if sites is None else sites) if s.supported]
    own = (
        [
            v
            for v in sg.hidden_and_outputs
            if all(
                e.op.type == ("linear" if sg.is_flat(v) else "conv2d") or not _parametric(e)
                for e in sg.in_edges(v)
            )
        ]
        if all_nodes
        else []
    )
    for w in set(own) | {w for s in sites for w in s.targets}:
        bw = linear_sources(sg, w)
        req.add_moment(bw, bw)
        req.add_grad(bw, w)
    for s in sites:
        req.add_moment(s.sources, s.sources)
        for w in s.targets:
            req.add_moment(s.sources, linear_sources(sg, w))
            req.add_grad(s.sources, w)
    return req


def _parametric(edge) -> bool:
    from .ops import op_info

    return op_info(edge.op.type).parametric


@dataclass
class Statistics:
    """Accumulated sums over ``n`` samples; read them as means through the methods below."""

    n: int
    pair_sums: dict[tuple[str, str], Tensor]
    grad_sums: dict[tuple[str, str], Tensor]
    g_sums: dict[str, Tensor]
    widths: dict[str, int]
    loss_sum: float
    spec: object = None
    g_sq_sums: dict[str, Tensor] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        """Mean loss over the measured samples (before any growth)."""
        return self.loss_sum / self.n

    def dim(self, sources: Sequence[str]) -> int:
        return sum(self._width(s) for s in sources)

    def _width(self, s: str) -> int:
        """A feature's width: measured, or (a site that was not measured) from the spec's shapes."""
        if s == ONE:
            return 1
        if s not in self.widths:
            self.widths[s] = feature_width(s, analyze(self.spec).shapes)  # type: ignore[arg-type]
        return self.widths[s]

    def _pair(self, x: str, y: str) -> Tensor:
        if (x, y) in self.pair_sums:
            return self.pair_sums[(x, y)]
        if (y, x) in self.pair_sums:
            return self.pair_sums[(y, x)].T
        raise KeyError(f"the block ({x}, {y}) was not measured: pass the site to measure()")

    def moment(self, xs: Sequence[str], ys: Sequence[str]) -> Tensor:
        """(1/n) sum B_xs B_ys^T, shape [dim xs, dim ys]."""
        return torch.cat([torch.cat([self._pair(x, y) for y in ys], 1) for x in xs], 0) / self.n

    def grad_moment(self, xs: Sequence[str], w: str) -> Tensor:
        """(1/n) sum B_xs g_w^T, shape [dim xs, width w]."""
        try:
            return torch.cat([self.grad_sums[(x, w)] for x in xs], 0) / self.n
        except KeyError as exc:
            raise KeyError(f"the block {exc} was not measured: pass the site to measure()") from None

    def G(self, w: str) -> Tensor:
        """Output-side factor G_w = (1/n) sum g_w g_w^T, shape [width, width]."""
        if w not in self.g_sums:
            raise KeyError(f"G of {w!r} was not measured: call measure(..., output_factors=True)")
        return self.g_sums[w] / self.n

    def grad_sq(self, w: str) -> float:
        """(1/n) sum ||g_w||^2 (the trace of G_w)."""
        if w in self.g_sq_sums:
            return float(self.g_sq_sums[w]) / self.n
        raise KeyError(f"the gradient of {w!r} was not measured: pass a site that targets it to measure()")


MEMORY_BUDGET = 32 * 2**20
"""Bytes that the rows and spectra of one image grid's features may take at once: a batch is measured
in chunks of samples that fit (the unfolded patches of a conv are ``kh * kw`` times larger than its
input). Smaller chunks also stay closer to the caches: on the conv bench (batch 256, 2 cores) 32 MiB
took 3% less time than 64 MiB and raised the peak memory 30 MiB less; 12 MiB was slower again."""


class Accumulator:
    """The sums of :class:`Statistics`, fed one batch at a time with the batch's post-activations and
    pre-activation gradients (:meth:`accumulate`); :meth:`add` measures a batch by itself (one
    forward and one ``autograd.grad`` to the pre-activations), :class:`Recorder` feeds it from
    training steps.

    Features of image nodes (:mod:`dagrow.features`) are unfolded per chunk of samples so that the rows
    of one grid never take more than ``memory_budget`` bytes; the sums do not depend on the chunking."""

    def __init__(
        self,
        model: nn.Module,
        req: Requirements,
        dtype: torch.dtype | None,
        products: torch.dtype | None = None,
        memory_budget: int = MEMORY_BUDGET,
    ) -> None:
        self.spec = spec_of(model)
        self.sg = analyze(self.spec)
        self.model, self.req, self.dtype, self.products = model, req, dtype, products
        self.memory_budget = memory_budget
        shapes = self.sg.shapes
        features = ({s for p in req.pairs for s in p} | {s for s, _ in req.grads}) - {ONE}
        self.sources = sorted(features, key=lambda f: (self.sg.position.get(base(f), -1), f))
        rank = {ONE: -1, **{s: i for i, s in enumerate(self.sources)}}
        self.rank = rank
        self.grid = {f: feature_grid(f, shapes) for f in self.sources}
        self.grid.update({w: node_grid(shapes[w]) for w in req.targets})
        self.widths = {f: feature_width(f, shapes) for f in self.sources}
        # the stride-1 patch features (no transform) whose blocks come from dagrow.patch_moments
        self.patches: dict[str, Geometry] = {}
        for f in self.sources:
            geometry = parse_geometry(f)
            if geometry is not None and fast(geometry) and not transform(f):
                self.patches[f] = geometry
        for x, y in [*req.pairs, *req.grads]:
            if ONE not in (x, y) and self.grid[x] != self.grid[y]:
                raise StatsError(f"the blocks {x} and {y} live on different grids and cannot be multiplied")
        # the nodes whose post-activations the features read
        self.nodes = sorted(
            {base(f) for f in self.sources if not is_one(f)}, key=self.sg.position.__getitem__
        )
        # canonical (lower rank first) pairs per source
        self.partners: dict[str, list[str]] = {s: [] for s in [ONE, *self.sources]}
        for x, y in req.pairs:
            a, b = (x, y) if rank[x] <= rank[y] else (y, x)
            if b not in self.partners[a]:
                self.partners[a].append(b)
        for s in self.partners:
            self.partners[s].sort(key=rank.__getitem__)
        self.grad_targets: dict[str, list[str]] = {s: [] for s in [ONE, *self.sources]}
        for x, w in sorted(req.grads, key=lambda p: (rank[p[0]], self.sg.position[p[1]])):
            self.grad_targets[x].append(w)
        self.targets = sorted(req.targets, key=self.sg.position.__getitem__)
        self.grids = sorted({gr for gr in self.grid.values() if gr is not None})
        self.n = 0
        self.loss_sum = 0.0
        self.pair_sums: dict[tuple[str, str], Tensor] = {}
        self.grad_sums: dict[tuple[str, str], Tensor] = {}
        self.g_sums: dict[str, Tensor] = {}
        self.g_sq_sums: dict[str, Tensor] = {}

    def hooks(self, post: dict[str, Tensor], pre: dict[str, Tensor], on_pre=None) -> list:
        """Forward hooks that put the needed post-activations into ``post`` and the targets'
        pre-activations into ``pre`` (and call ``on_pre(w, value)``)."""
        model, handles = self.model, []
        for v in set(self.nodes) - set(self.spec.inputs):
            handles.append(
                model.get_submodule(f"nodes.{v}.activation").register_forward_hook(
                    lambda m, i, o, v=v: post.__setitem__(v, o)
                )
            )

        def keep(w: str, o: Tensor) -> None:
            pre[w] = o
            if on_pre is not None:
                on_pre(w, o)

        for w in self.targets:
            handles.append(
                model.get_submodule(f"nodes.{w}").register_forward_hook(lambda m, i, o, w=w: keep(w, o))
            )
        return handles

    def check_loss(self, loss: Tensor, inputs: Sequence[Tensor], index: int) -> None:
        if loss.dim() != 0:
            raise StatsError(f"the loss must be a scalar mean over samples, got shape {list(loss.shape)}")
        if not torch.isfinite(loss):
            # the inputs are checked only here (a full pass over them costs ~5% of a step);
            # a non-finite input that does not reach the loss is caught by result()
            for name, x in zip(self.spec.inputs, inputs, strict=True):
                if not torch.isfinite(x).all():
                    raise StatsError(f"batch {index}: input {name!r} contains NaN or infinite values")
            raise StatsError(f"batch {index}: the loss is not finite ({float(loss.detach())})")

    def add(self, inputs: tuple[Tensor, ...], target: Tensor, loss_fn: LossFn, index: int) -> None:
        post: dict[str, Tensor] = dict(zip(self.spec.inputs, inputs, strict=True))
        pre: dict[str, Tensor] = {}
        handles = self.hooks(post, pre)
        try:
            with torch.enable_grad():
                loss = loss_fn(self.model(*inputs), target)
                self.check_loss(loss, inputs, index)
                grads = torch.autograd.grad(loss, [pre[w] for w in self.targets], allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        self.accumulate(post, dict(zip(self.targets, grads, strict=True)), pre, float(loss.detach()))

    def accumulate(
        self,
        post: dict[str, Tensor],
        grads: dict[str, Tensor | None],
        pre: dict[str, Tensor],
        loss: float,
        known: dict[tuple[str, str], Tensor] | None = None,
    ) -> None:
        """Add one batch: ``post`` the sources' values, ``grads`` dL/da of each target (None: no
        path to the loss), ``pre`` the targets' pre-activations (for shapes), ``loss`` the batch's
        mean loss, ``known`` blocks ``sum b_s g_w^T`` already computed (from weight gradients)."""
        first = next(iter(post.values()), next(iter(pre.values())))
        n, dtype = first.shape[0], self.products or first.dtype

        def grad_of(w: str) -> Tensor:
            grad = grads.get(w)
            return (torch.zeros_like(pre[w]) if grad is None else grad).detach()

        # g = n dL/da: the factor n is applied to the small products (alpha), not to g
        flat = [s for s in self.sources if self.grid[s] is None]
        device = first.device
        z = {
            s: feature_rows(
                s, None if is_one(s) else post[base(s)].detach(), n, None, dtype=dtype, device=device
            )
            for s in flat
        }
        g = {w: grad_of(w).flatten(1).to(dtype) for w in self.targets if self.grid[w] is None}
        self._accumulate(z, g, n, dtype, known or {}, flat=True)
        for grid in self.grids:
            grid_grads = {w: grad_of(w) for w in self.targets if self.grid[w] == grid}
            self._accumulate_grid(grid, post, grid_grads, n, dtype, known or {})
        self.n += n
        self.loss_sum += loss * n

    def _accumulate_grid(
        self,
        grid: tuple[int, int],
        post: dict[str, Tensor],
        grads: dict[str, Tensor],
        n: int,
        dtype,
        known: dict[tuple[str, str], Tensor],
    ) -> None:
        """The blocks of one image grid, over chunks of samples that fit the memory budget.

        Stride-1 patch features are never unfolded (:mod:`dagrow.patch_moments`): their blocks with
        each other are correlations of their inputs, with the grid's constant the weight gradient of
        a conv of all-one gradients, with a gradient the weight gradient of a conv; the other blocks
        multiply unfolded rows."""
        features = [s for s in self.sources if self.grid[s] == grid]
        geometry = {s: self.patches[s] for s in features if s in self.patches}
        quick = list(geometry)
        rank = self.rank.__getitem__
        pairs = [(s, p) for s in features for p in self.partners[s]]
        correlated = [(s, p) for s, p in pairs if s in quick and p in quick]
        summed = [(s, p) for s, p in pairs if is_one(s) and p in quick]
        slow = set(pairs) - set(correlated) - set(summed)
        grad_pairs = [(s, w) for s in features for w in self.grad_targets[s] if w in grads]
        slow_grads = {(s, w) for s, w in grad_pairs if s not in quick and (s, w) not in known}
        # the constant's gradient blocks are sums of the gradients; other unfolded features need rows
        constant_grads = {(s, w) for s, w in slow_grads if is_one(s)}
        slow_grads -= constant_grads
        rows_of = {w for _, w in slow_grads} | (set(grads) if self.req.output_factors else set())
        unfolded = sorted({f for pair in [*slow, *slow_grads] for f in pair if f in self.widths}, key=rank)
        nodes = sorted({base(s) for s in quick}, key=self.sg.position.__getitem__)
        reach = [largest_shift(geometry[s], geometry[p]) for s, p in correlated]
        layout = Layout.of(
            [tuple(post[v].shape[2:]) for v in nodes] or [grid],
            (max([d[0] for d in reach], default=0), max([d[1] for d in reach], default=0)),
        )
        channels, total_channels = {}, 0
        for v in nodes:
            channels[v] = slice(total_channels, total_channels + post[v].shape[1])
            total_channels += post[v].shape[1]
        jointly = correlate_jointly(
            [(post[base(s)].shape[1], post[base(p)].shape[1], base(s) == base(p)) for s, p in correlated],
            total_channels,
        )
        for key in grad_pairs:  # whole-batch gradient blocks known from the weight gradients
            if key in known:
                self._add(self.grad_sums, key, known[key])
        size = torch.empty((), dtype=dtype).element_size()
        width = sum(self.widths[s] for s in unfolded) + sum(grads[w].shape[1] for w in rows_of)
        spectra = layout.floats(sum(post[v].shape[1] for v in nodes)) if correlated else 0
        targets = sum(g.shape[1] for g in grads.values()) if quick else 0  # concatenated per feature
        per_sample = (2 * width + targets) * grid[0] * grid[1] + spectra
        chunk = max(1, self.memory_budget // max(per_sample * size, 1))
        device = first_device(post)
        for start in range(0, n, chunk):
            part = slice(start, min(start + chunk, n))
            x = {v: post[v][part].detach().to(dtype) for v in nodes}
            if correlated:  # its spectra are freed on return, before the gradient blocks
                self._patch_moments(correlated, x, geometry, layout, channels if jointly else None, grid)
            for s, p in summed:
                total = x[base(p)].sum(0, keepdim=True)
                block = patch_gradient(total, geometry[p], total.new_ones((1, 1, *grid)))
                self._add(self.pair_sums, (s, p), block.T)
            for s in quick:  # one weight gradient per feature, of all its targets at once
                ws = [w for w in self.grad_targets[s] if w in grads and (s, w) not in known]
                if ws:
                    together = torch.cat([grads[w][part].to(dtype) for w in ws], 1)
                    blocks = patch_gradient(x[base(s)], geometry[s], together).mul_(n)
                    for w, block in zip(ws, blocks.split([grads[w].shape[1] for w in ws], 1), strict=True):
                        self._add(self.grad_sums, (s, w), block)
            for s, w in constant_grads:
                self._add(self.grad_sums, (s, w), grads[w][part].to(dtype).sum((0, 2, 3))[None].mul_(n))
            z = {}
            for s in unfolded:
                value = None if is_one(s) else post[base(s)][part].detach()
                z[s] = feature_rows(s, value, part.stop - part.start, grid, dtype=dtype, device=device)
            g = {w: image_rows(grads[w][part]).to(dtype) for w in rows_of}
            self._accumulate(z, g, n, dtype, {}, flat=False, pairs=slow, grad_pairs=slow_grads, moments=False)
            for w, grad in grads.items():  # the gradient moments from the gradients as they are
                self._gradient_moments(w, grad[part].to(dtype), g.get(w), n)

    def _patch_moments(
        self,
        correlated: list[tuple[str, str]],
        x: dict[str, Tensor],
        geometry: dict[str, Geometry],
        layout: Layout,
        channels: dict[str, slice] | None,
        grid: tuple[int, int],
    ) -> None:
        """Add the blocks of the stride-1 patch pairs ``correlated`` of one chunk of samples ``x`` (by
        node): with ``channels``, one spectrum and one product per frequency for all the nodes
        (:class:`Correlations`), else one :class:`Chunk` for the pairs' own inputs."""
        dtype = next(iter(x.values())).dtype
        joint = Correlations(layout.stack(*x.values(), dtype=dtype), channels, layout) if channels else None
        moments = Chunk(layout)  # each input's spectrum and each pair's terms once
        stacked = {} if joint else {v: layout.stack(x[v], dtype=dtype) for v in x}
        for s, p in correlated:
            u, v = base(s), base(p)
            shape_u, shape_v = self.sg.shapes[u], self.sg.shapes[v]
            if joint is not None:
                block = joint.moment(u, shape_u, geometry[s], v, shape_v, geometry[p], grid)
            else:
                xu, xv = stacked[u], stacked[v]
                block = moments.moment(xu, shape_u, geometry[s], xv, shape_v, geometry[p], grid)
            self._add(self.pair_sums, (s, p), block)

    def _add(self, store: dict, key, value: Tensor) -> None:
        """store[key] += value, summed in ``dtype`` (the first value is copied, never aliased)."""
        summed = value.to(self.dtype or value.dtype)
        if key in store:
            store[key] += summed
        else:
            store[key] = summed.clone() if summed is value else summed

    def _add_mm(self, store: dict, key, a: Tensor, b: Tensor, alpha: float = 1.0) -> None:
        """store[key] += alpha a^T b: the product in the dtype of a and b, the sum in ``dtype``
        (in place after the first batch)."""
        if key in store and store[key].dtype == a.dtype:
            store[key].addmm_(a.T, b, alpha=alpha)
            return
        product = a.T @ b
        if alpha != 1.0:
            product.mul_(alpha)
        self._add(store, key, product)

    def _accumulate(
        self,
        z: dict[str, Tensor],
        g: dict[str, Tensor],
        n: int,
        dtype,
        known: dict[tuple[str, str], Tensor],
        flat: bool,
        pairs: set[tuple[str, str]] | None = None,
        grad_pairs: set[tuple[str, str]] | None = None,
        moments: bool = True,
    ) -> None:
        """Add the blocks among the rows ``z`` (features) and ``g`` (targets' gradients) of one batch
        of ``n`` samples (or one chunk of it); the flat constant "1" only with ``flat``; only the
        canonical ``pairs`` and the ``grad_pairs`` given (None: all); with ``moments``, each
        gradient's moments (:meth:`_gradient_moments`)."""
        # one product per block: no concatenated copy of the features, and each accumulator is
        # updated in place (addmm_) after the first batch
        some = next(iter(z.values()), next(iter(g.values()), None))
        device = some.device if some is not None else None
        for s in [ONE, *z] if flat else list(z):
            for p in self.partners[s]:
                if pairs is not None and (s, p) not in pairs:
                    continue
                if p == ONE:  # only s == ONE pairs with ONE (it ranks lowest)
                    count = torch.full((1, 1), float(n), dtype=dtype, device=device)
                    self._add(self.pair_sums, (s, p), count)
                elif p not in z:
                    continue
                elif s == ONE:
                    self._add(self.pair_sums, (s, p), z[p].sum(0, keepdim=True))
                else:
                    self._add_mm(self.pair_sums, (s, p), z[s], z[p])
            for w in self.grad_targets[s]:
                if w not in g or (grad_pairs is not None and (s, w) not in grad_pairs):
                    continue
                if (s, w) in known:
                    self._add(self.grad_sums, (s, w), known[(s, w)])
                elif s == ONE:
                    self._add(self.grad_sums, (s, w), g[w].sum(0, keepdim=True).mul_(n))
                else:
                    self._add_mm(self.grad_sums, (s, w), z[s], g[w], alpha=n)
        for w in g if moments else ():
            self._gradient_moments(w, g[w], g[w], n)

    def _gradient_moments(self, w: str, grad: Tensor, rows: Tensor | None, n: int) -> None:
        """The squared norm of w's gradient ``grad`` (any shape; one pass) always, and G from its
        ``rows`` (``[rows, C]``) when the output factors are asked."""
        self._add(self.g_sq_sums, w, torch.linalg.vector_norm(grad).square().mul_(n * n))
        if self.req.output_factors:
            assert rows is not None
            self._add_mm(self.g_sums, w, rows, rows, alpha=n * n)

    def result(self) -> Statistics:
        if self.n == 0:
            raise StatsError("no batch was given: the statistics need at least one sample")
        stores = (self.pair_sums, self.grad_sums, self.g_sums, self.g_sq_sums)
        every = [v.reshape(-1) for store in stores for v in store.values()]
        if every and not torch.isfinite(torch.cat(every)).all():  # one check, then find the culprit
            for store in stores:
                for key, value in store.items():
                    if not torch.isfinite(value).all():
                        raise StatsError(
                            f"non-finite statistics for {key} (NaN or overflow in activations or gradients)"
                        )
        # a node's width is what its gradient g has per row: channels for an image node
        widths = {v: s[0] if len(s) == 3 else math.prod(s) for v, s in self.sg.shapes.items()}
        widths.update(self.widths)
        return Statistics(
            self.n,
            self.pair_sums,
            self.grad_sums,
            self.g_sums,
            widths,
            self.loss_sum,
            self.spec,
            self.g_sq_sums,
        )


def _split_batch(batch, n_inputs: int) -> tuple[tuple[Tensor, ...], Tensor]:
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise StatsError("each batch must be a pair (inputs, target)")
    x, y = batch
    xs = tuple(x) if isinstance(x, tuple | list) else (x,)
    if len(xs) != n_inputs:
        raise StatsError(f"the model has {n_inputs} inputs but a batch gives {len(xs)}")
    return xs, y


def measure(
    model: nn.Module,
    batches: Iterable,
    loss: str | LossFn = "mse",
    *,
    sites: Iterable[Site] | None = None,
    dtype: torch.dtype | None = torch.float64,
    products: torch.dtype | None = None,
    all_nodes: bool = True,
    output_factors: bool = True,
) -> Statistics:
    """Accumulate the statistics of ``model`` over ``batches`` of ``(inputs, target)``.

    ``inputs`` is a tensor (one model input) or a tuple in the spec's input order. Each batch's
    products are computed in ``products`` (default: the model's dtype, so a float32 model runs them at
    float32 speed) and summed across batches in ``dtype`` (float64 by default; ``None`` keeps the
    products' dtype). A float64 model therefore gets float64 throughout. Only the blocks the
    ``sites`` need (default: every supported site of the spec) are computed. ``output_factors=False``
    keeps only the trace of each G_w (the squared gradient norm, all the proposals use), which saves
    one product per target; SENN's natural score needs the full G. To gather the same statistics
    during training steps instead of a pass of their own, use :class:`Recorder`.

    The model is measured in its mode (batch norms use the batch's statistics in train mode, their
    running ones in eval mode; docs/growing.md) and its running statistics are left as they were.
    """
    loss_fn = loss_function(loss)
    req = requirements(model, sites, all_nodes=all_nodes, output_factors=output_factors)
    acc = Accumulator(model, req, dtype, products)
    n_inputs = len(acc.spec.inputs)
    with running_stats_kept(model):  # a statistics pass never moves a batch norm's running statistics
        for i, batch in enumerate(batches):
            xs, y = _split_batch(batch, n_inputs)
            acc.add(xs, y, loss_fn, i)
    return acc.result()
