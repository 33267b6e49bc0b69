"""The numbers of one benchmark run, and the ratios computed from them."""

import dataclasses
import statistics


@dataclasses.dataclass
class VariantResult:
    name: str
    label: str
    description: str
    checkpoint_bytes: int
    load_seconds: float | None = None
    load_peak_bytes: int | None = None  # peak resident memory above the fresh process's baseline
    seconds: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # workload -> timed repeats
    profile: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # workload -> seconds by category
    skipped: list[str] = dataclasses.field(default_factory=list)  # workloads this variant's model cannot run
    kernel: str = ""  # for optimum-int8 variants, the kernel plan and compute dtype its int8 layers ran with

    def median(self, workload: str) -> float | None:
        times = self.seconds.get(workload)
        return statistics.median(times) if times else None


@dataclasses.dataclass
class BenchmarkResult:
    model: str
    workloads: dict[str, str]  # name -> column title
    variants: list[VariantResult]
    settings: dict
    machine: dict

    def variant(self, name: str) -> VariantResult | None:
        return next((v for v in self.variants if v.name == name), None)

    def speedup(self, variant: VariantResult, workload: str, baseline: str) -> float | None:
        """How many times faster ``variant`` ran ``workload`` than ``baseline``, from this run's medians."""
        reference = self.variant(baseline)
        if reference is None:
            return None
        ours, theirs = variant.median(workload), reference.median(workload)
        return theirs / ours if ours and theirs else None

    def to_dict(self) -> dict:
        variants = []
        for variant in self.variants:
            row = dataclasses.asdict(variant)
            row["median_seconds"] = {w: variant.median(w) for w in variant.seconds}
            row["speedup"] = {
                baseline: {w: self.speedup(variant, w, baseline) for w in variant.seconds} for baseline in ("fp32", "bf16")
            }
            variants.append(row)
        return {"model": self.model, "workloads": self.workloads, "settings": self.settings, "machine": self.machine,
                "variants": variants}
