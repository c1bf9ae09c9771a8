"""Rendering for people: rich tables in a terminal, HTML in a notebook. The only module
that imports rich."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text

from vramplan import glossary
from vramplan.errors import cut, one_line
from vramplan.units import GIB

if TYPE_CHECKING:
    from vramplan.gpus import GPU
    from vramplan.published import Comparison as PublishedComparison
    from vramplan.published import Stats as PublishedStats
    from vramplan.published import Summary as PublishedSummary
    from vramplan.results import CardEstimate, Plan
    from vramplan.trace.result import TraceResult
    from vramplan.validate import Comparison, Summary


def _gib(n: int) -> str:
    return f"{n / GIB:,.2f}"


def _setup_line(plan: Plan) -> str:
    s = plan.setup
    if s.method == "inference":
        quant = f" {s.quant}" if s.quant != "none" else ""
        kv = f", KV cache {s.kv_cache}" if s.kv_cache != "auto" else ""
        split = f", {s.num_gpus} GPUs device_map (memory per card)" if s.parallel == "device_map" else ""
        shape = f"{s.seq_len} tokens (prompt + generated) x batch {s.micro_batch}"
        return f"inference{quant}, {s.precision}, {shape}{kv}, {s.attention}{split}"
    parts: list[str] = [s.method]
    if s.method == "qlora":
        parts.append(s.quant)
    if s.is_lora:
        parts.append(f"r{s.lora_rank} alpha {s.lora_alpha:g} dropout {s.lora_dropout:g} targets {s.lora_targets}")
        if s.trainable_extra:
            parts.append("+" + ",".join(s.trainable_extra))
    if s.method == "freeze":
        parts.append(f"top {s.freeze_trainable_layers} layers")
    parts += [
        s.precision,
        s.optimizer,
        f"seq {s.seq_len}",
        f"micro-batch {s.micro_batch}",
        f"grad-accum {s.grad_accum}",
        "gradient checkpointing" if s.grad_checkpointing else "no gradient checkpointing",
        s.attention,
    ]
    if s.rl != "none":
        parts.append(
            f"{s.rl.upper()}: {s.num_generations} generations per prompt, prompt {s.seq_len - s.completion_len}"
            f" + completion {s.completion_len} tokens, beta {s.beta:g}"
        )
    if s.parallel != "none":
        gpus = f"{s.num_nodes} nodes x {s.num_gpus} GPUs" if s.num_nodes > 1 else f"{s.num_gpus} GPUs"
        layout = f"{gpus}, {s.parallel}"
        if s.parallel == "fsdp" and s.fsdp_sharding != "full_shard":
            layout += f" {s.fsdp_sharding}"
        layout += f", offload {s.offload}" if s.offload != "none" else ""
        parts.append(layout + (" (the fullest card below)" if plan.cards else " (memory per GPU)"))
    return ", ".join(parts)


def cards_table(plan: Plan) -> Table:
    """device_map: what each card holds and its own peak."""
    table = Table(title="per card (device_map: layers placed as accelerate's balanced map does)", title_justify="left")
    for col in ("card", "holds", "peak at", "allocated GiB", "reserved GiB", "device GiB", "verdict"):
        table.add_column(col, justify="right" if "GiB" in col else "left")
    for c, last in _card_rows(plan.cards):
        room = plan.gpu.memory_bytes - c.device_bytes
        verdict = f"fits, {_gib(room)} free" if room >= 0 else f"over by {_gib(-room)}"
        table.add_row(
            str(c.index) if last == c.index else f"{c.index}-{last}",
            c.holds,
            c.phase,
            _gib(c.allocated_bytes),
            _gib(c.reserved_bytes),
            _gib(c.device_bytes),
            Text(verdict, style="green" if room >= 0 else "red"),
        )
    return table


def _card_rows(cards: list[CardEstimate]) -> list[tuple[CardEstimate, int]]:
    """Cards with the index of the last card their row stands for: neighbours that hold
    nothing (more cards than modules) share one row."""

    def row(c: CardEstimate) -> tuple[object, ...]:
        return c.holds, c.phase, c.allocated_bytes, c.reserved_bytes, c.device_bytes, c.terms

    rows: list[tuple[CardEstimate, int]] = []
    for c in cards:
        if rows and c.holds == "nothing" and row(c) == row(rows[-1][0]):
            rows[-1] = (rows[-1][0], c.index)
        else:
            rows.append((c, c.index))
    return rows


def host_table(plan: Plan) -> Table:
    """CPU offload: host RAM per node."""
    table = Table(title="host RAM per node (CPU offload, pinned)", title_justify="left")
    table.add_column("term")
    table.add_column("GiB", justify="right")
    for name, value in sorted(plan.host_terms.items(), key=lambda kv: -kv[1]):
        table.add_row(name, _gib(value))
    table.add_row("total", _gib(plan.host_bytes))
    if plan.host_ram_bytes is not None:
        table.add_row("given (--host-ram)", _gib(plan.host_ram_bytes))
    return table


def plan_renderable(plan: Plan) -> Group:
    gpu = plan.gpu
    if plan.verdict == "tight":
        verdict = Text(
            f"TIGHT: fits with {_gib(plan.headroom_bytes)} GiB headroom, less than runs like it need",
            style="bold yellow",
        )
    elif plan.fits:
        verdict = Text(f"FITS with {_gib(plan.headroom_bytes)} GiB headroom", style="bold green")
    else:
        verdict = Text(f"DOES NOT FIT: {_gib(-plan.headroom_bytes)} GiB over", style="bold red")
    head = Text.assemble(
        (f"{plan.model}", "bold"),
        f" ({plan.total_params / 1e9:.2f}B params"
        + (f", {plan.params.active / 1e9:.2f}B active per token" if plan.params.idle_experts else "")
        + f", {plan.trainable_params:,} trainable) on ",
        (f"{gpu.name}", "bold"),
        f" ({gpu.memory_mib:,} MiB)\n",
        f"setup: {_setup_line(plan)}\n",
        verdict,
    )
    where = f" (card {max(plan.cards, key=lambda c: c.device_bytes).index})" if plan.cards else ""
    when = glossary.phase(plan.peak.phase)
    terms = Table(title=f"peak at {plan.peak.phase}{where}" + (f": {when}" if when else ""), title_justify="left")
    terms.add_column("term")
    terms.add_column("GiB", justify="right")
    terms.add_column("what it is")
    for name, value in sorted(plan.terms.items(), key=lambda kv: -kv[1]):
        terms.add_row(name, _gib(value), glossary.term(name))
    terms.add_row("total", _gib(sum(plan.terms.values())), "the device tier", style="bold")
    tiers = Table(title="peak tiers", title_justify="left")
    tiers.add_column("tier")
    tiers.add_column("GiB", justify="right")
    tiers.add_column("what shows it")
    tiers.add_row("allocated", _gib(plan.peak.allocated_bytes), "torch.cuda.max_memory_allocated")
    tiers.add_row("reserved", _gib(plan.peak.reserved_bytes), "torch.cuda.max_memory_reserved")
    tiers.add_row("device", _gib(plan.peak.device_bytes), "nvidia-smi (whole process)")
    seen = "as cards report it" if gpu.capacity_kind == "measured" else "estimated"
    tiers.add_row(
        "card",
        _gib(gpu.memory_bytes),
        f"{gpu.name}: what torch can use, {seen} (nvidia-smi shows {_gib(gpu.driver_memory_bytes)})",
    )
    alts = Table(title="alternatives", title_justify="left")
    alts.add_column("")
    alts.add_column("device GiB", justify="right")
    timed = any(a.tokens_per_second for a in plan.alternatives)
    if timed:
        alts.add_column("tok/s", justify="right")
        alts.add_column("s/step", justify="right")
    alts.add_column("why")
    for alt in plan.alternatives:
        mark = "*" if alt.chosen else ("ok" if alt.fits else "x")
        speed = (
            [f"{alt.tokens_per_second:,.0f}", f"{alt.seconds_per_step:.2f}"] if alt.tokens_per_second else ["-", "-"]
        )
        alts.add_row(mark, _gib(alt.device_bytes), *(speed if timed else []), alt.reason)
    if plan.alternatives:
        alts.caption = "* chosen, ok fits but ranks lower, x does not fit"
        alts.caption_justify = "left"
    parts: list = [head]
    if plan.cards:
        parts.append(cards_table(plan))
    from vramplan.render_phases import phases_table

    parts += [terms, phases_table(plan), tiers]
    if plan.host_terms:
        parts.append(host_table(plan))
    parts.append(alts)
    if plan.notes:
        parts.append(Text("\n".join(f"note: {n.text}" for n in plan.notes), style="dim"))
    return Group(*parts)


def plan_html(plan: Plan, chart: str = "") -> str:
    """The notebook's view of ``plan`` (vramplan/notebook.py), with ``chart`` (the peak's SVG bars)."""
    from vramplan.notebook import plan_html as view

    return view(plan, _setup_line(plan), chart)


def gpus_table(gpus: list[GPU], width: int = 120) -> Table:
    """The GPU catalog; narrower than 100 columns, without bandwidth, architecture and the bf16
    and FlashAttention-2 flags (``--json`` has them), so that every row fits."""
    table = Table(title="GPU catalog")
    cols = ["key", "name", "MiB", "bf16 TFLOPs"] + (["GB/s", "arch", "bf16", "FA2"] if width >= 100 else [])
    for col in cols:
        # keys whole, however narrow the terminal (what --gpu takes); the rest folds rather than cuts
        table.add_column(col, min_width=max(len(g.key) for g in gpus) if col == "key" else None, overflow="fold")
    for g in gpus:
        cells = [
            g.key,
            g.name,
            f"{g.memory_mib:,}",
            f"{g.bf16_tflops_dense:g}" if g.bf16_tflops_dense else "-",
            f"{g.memory_bandwidth_gb_s:g}" if g.memory_bandwidth_gb_s else "-",
            g.architecture,
            "yes" if g.bf16_supported else "no",
            "yes" if g.flash_attn2_supported else "no",
        ]
        table.add_row(*cells[: len(cols)])
    return table


def models_table(rows: list[tuple[str, str, str, str, int, str]]) -> Table:
    table = Table(title="model catalog")
    for i, col in enumerate(("name", "hub id", "type", "family", "params", "published")):
        # names whole, however narrow the terminal (what MODEL takes); the rest folds rather than cuts
        table.add_column(col, min_width=max(len(r[0]) for r in rows) if i == 0 else None, overflow="fold")
    for name, hub_id, model_type, fam, total, published in rows:
        table.add_row(name, hub_id, model_type, fam, f"{total:,}", published)
    return table


def trace_renderable(result: TraceResult) -> Group:
    s = result.setup
    what = {
        "trace": "traced with fake tensors on the CPU",
        "cpu": "run for real on the CPU",
        "cuda": "measured on the GPU",
    }[result.backend]
    head = Text.assemble(
        (result.model, "bold"),
        f" {what}: " + (f"{result.trainer}'s own training step, " if result.trainer else ""),
        f"{result.steps} step(s) in {result.seconds:.1f} s\n",
        f"setup: {s.method}{' ' + s.quant if s.method == 'qlora' else ''}, {s.precision}, {s.optimizer}, "
        f"seq {s.seq_len}, micro-batch {s.micro_batch}, "
        f"{'gradient checkpointing' if s.grad_checkpointing else 'no gradient checkpointing'}, {s.attention}\n",
        (f"peak {_gib(result.peak_bytes)} GiB", "bold"),
        f" at step {result.peak_step} {result.peak_phase}" if result.backend != "cuda" else " (max_memory_allocated)",
    )
    if result.backend != "cuda" and result.simulated_reserved_bytes:
        head.append(
            f"\nreserved {_gib(result.simulated_reserved_bytes)} GiB when these allocations are replayed through "
            "torch's caching allocator (max_memory_reserved, before what loading leaves cached)"
        )
        if result.simulated_needed_bytes:
            head.append(
                f"; a card needs {_gib(result.simulated_needed_bytes)} GiB of it (wholly free segments are "
                "released before out-of-memory)"
            )
    parts: list = [head]
    if result.backend == "cuda":
        tiers = Table(title="GPU counters", title_justify="left")
        tiers.add_column("tier")
        tiers.add_column("GiB", justify="right")
        tiers.add_row("allocated", _gib(result.peak_bytes))
        tiers.add_row("reserved", _gib(result.reserved_bytes or 0))
        tiers.add_row("device (NVML)", _gib(result.device_bytes) if result.device_bytes else "-")
        parts.append(tiers)
        if result.outcome != "ok":
            parts.append(Text(f"outcome: {result.outcome}", style="bold red"))
    else:
        phases = Table(title="peak per phase", title_justify="left")
        phases.add_column("step/phase")
        phases.add_column("GiB", justify="right")
        for name, value in result.phases.items():
            phases.add_row(name, _gib(value))
        kinds = Table(title="at the peak, by kind", title_justify="left")
        kinds.add_column("kind")
        kinds.add_column("GiB", justify="right")
        for name, value in result.by_kind.items():
            kinds.add_row(name, _gib(value))
        largest = Table(title="largest allocations at the peak", title_justify="left")
        for col in ("GiB", "kind", "made by", "shape", "dtype"):
            largest.add_column(col)
        for a in result.largest[:8]:
            largest.add_row(_gib(a.nbytes), a.kind, a.op, "x".join(map(str, a.shape)), a.dtype)
        parts += [phases, kinds, largest]
    if result.not_included:
        parts.append(
            Text(
                "not included (compare with the planner's allocated tier): " + "; ".join(result.not_included),
                style="dim",
            )
        )
    for note in result.notes:
        parts.append(Text(f"note: {note}", style="dim"))
    return Group(*parts)


def _setup_short(c: Comparison) -> str:
    s = c.setup
    parts = [
        s.method + (f" {s.quant}" if s.method == "qlora" else ""),
        s.precision,
        s.optimizer,
        f"s{s.seq_len}xb{s.micro_batch}",
        "GC" if s.grad_checkpointing else "noGC",
        s.attention,
    ]
    if s.is_lora:
        parts.append(
            f"r{s.lora_rank} {s.lora_targets} d{s.lora_dropout:g}"
            + ("+" + ",".join(s.trainable_extra) if s.trainable_extra else "")
        )
    if s.method == "freeze":
        parts.append(f"top{s.freeze_trainable_layers}")
    if s.grad_accum > 1:
        parts.append(f"accum{s.grad_accum}")
    return " ".join(parts)


def summary_line(summary: Summary) -> str:
    line = (
        f"{summary.count} configurations: median |error| {summary.median_abs_pct:.3f}%, "
        f"90th percentile {summary.p90_abs_pct:.3f}%, max {summary.max_abs_pct:.3f}%; "
        f"{summary.underestimates} underestimates (worst {summary.worst_underestimate_pct:.3f}%)"
    )
    if summary.skipped:
        why = ", ".join(f"{reason} {n}" for reason, n in summary.skipped.items())
        line += f"; {sum(summary.skipped.values())} records skipped ({why})"
    return line


def validation_table(summary: Summary) -> Group:
    table = Table(title="estimate (allocated, less CUDA-only terms) vs traced peak", title_justify="left")
    for col in (
        "model",
        "setup",
        "estimate GiB",
        "trace GiB",
        "error %",
        "error GiB",
        "phase est/trace",
        "differs most",
    ):
        table.add_column(col, justify="right" if "GiB" in col or "%" in col else "left")
    for c in summary.rows:
        cells = (
            c.model,
            _setup_short(c),
            _gib(c.estimate_bytes),
            _gib(c.traced_bytes),
            f"{c.error_pct:+.3f}",
            f"{c.error_bytes / GIB:+.3f}",
            f"{c.estimate_phase}/{c.traced_phase}",
            c.differs_most,
        )
        table.add_row(*(Text(_printable(cell)) for cell in cells))  # a record's text is not markup
    return Group(table, Text(summary_line(summary), style="bold"))


def validation_markdown(summary: Summary) -> str:
    lines = [
        "| model | setup | estimate GiB | trace GiB | error % | error GiB | phase est/trace | differs most |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in summary.rows:
        lines.append(
            f"| {c.model} | {_setup_short(c)} | {_gib(c.estimate_bytes)} | {_gib(c.traced_bytes)} | "
            f"{c.error_pct:+.3f} | {c.error_bytes / GIB:+.3f} | {c.estimate_phase}/{c.traced_phase} | "
            f"{c.differs_most} |"
        )
    return "\n".join(lines) + "\n\n" + summary_line(summary) + "\n"


def _opt(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def stats_line(name: str, s: PublishedStats) -> str:
    return (
        f"{name}: {s.rows} rows, median |error| {_opt(s.median_abs_pct)}%, 90th pct {_opt(s.p90_abs_pct)}%, "
        f"{s.within_10pct} within ±10%, {s.underestimates} under (worst {_opt(s.worst_under_pct)}%)"
    )


def published_summary_lines(summary: PublishedSummary) -> list[str]:
    why = ", ".join(f"{code} {n}" for code, n in summary.exclusions.items())
    lines = [
        stats_line("all compared", summary.overall),
        f"{summary.rows} rows: {summary.compared} compared, {summary.excluded} excluded"
        + (f" ({why}; reasons in the table)" if why else "")
        + f"; {summary.unknown_vs_reserved} of unknown measurement kind compared against reserved",
        f"oom rows: {summary.oom_rows}; predicted to fit: {_ids(summary.oom_predicted_fit)};"
        f" tight: {_ids(summary.oom_predicted_tight)}",
    ]
    if summary.ran_on_a_card:
        lines.append(
            f"rows that ran on a named card: {summary.ran_on_a_card}; predicted not to fit:"
            f" {_ids(summary.ran_predicted_no_fit)}"
        )
    lines += [stats_line(f"source {k}", v) for k, v in summary.by_source.items()]
    lines += [stats_line(f"method {k}", v) for k, v in summary.by_method.items()]
    lines += [stats_line(f"trainer {k}", v) for k, v in summary.by_trainer.items()]
    lines.append("rows by trainer: " + ", ".join(f"{k} {n}" for k, n in summary.rows_by_trainer.items()))
    return [_printable(line) for line in lines]  # sources and methods come from a user's file


def _ids(ids: list[str]) -> str:
    """A count, then the row ids: ``2 (lf-1, 81)``; ``none`` when empty (a bare id reads as a count)."""
    return f"{len(ids)} ({', '.join(ids)})" if ids else "none"


def published_note(r: PublishedComparison) -> str:
    """The note column: why a row is excluded, and what an oom row was predicted to do."""
    note = f"excluded: {r.reason}" if r.excluded else ""
    if r.outcome == "oom" and r.verdict is not None:
        said = {"fits": "predicted to FIT", "tight": "predicted tight", "does not fit": "predicted not to fit"}
        oom = f"oom: {said[r.verdict]} (peak at {r.phase})"
        note = f"{oom}; {note}" if note else oom
    elif r.outcome == "oom":
        note = f"oom; {note}" if note else "oom"
    return note


def published_table(rows: list[PublishedComparison], summary: PublishedSummary) -> Group:
    """Cells are plain Text: a row's values come from a user's file and are never read as markup."""
    table = Table(title="estimate vs measured GPU peak (per GPU)", title_justify="left")
    for col in ("id", "model", "method", "measured", "tier", "estimate GiB", "measured GiB", "error %", "note"):
        table.add_column(col, justify="right" if "GiB" in col or "%" in col else "left")
    for r in rows:
        cells = (
            r.id or f"(line {r.line})",
            r.model or "-",
            r.method,
            r.measurement,
            r.tier,
            "-" if r.estimate_bytes is None else _gib(r.estimate_bytes),
            "-" if r.measured_bytes is None else _gib(r.measured_bytes),
            _opt(r.error_pct, "{:+.1f}"),
            published_note(r),
        )
        table.add_row(*(Text(_printable(c, 80 if i < 3 else 400)) for i, c in enumerate(cells)))
    return Group(table, *(Text(line, style="bold") for line in published_summary_lines(summary)))


def _printable(text: str, limit: int = 400) -> str:
    """A cell as it can be shown: control characters escaped, cut in the middle past ``limit``."""
    return cut(one_line(text), limit)
