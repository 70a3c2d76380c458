"""Figures of the device kinds the presets use, each with the document it comes from.

A :class:`DeviceSpec` is what a :class:`placement.Device` of that kind is made from; the cost model also
reads :data:`DEVICE_SPECS` to scale a time measured on one GPU kind to another (ratio of peak FLOP/s).

Units: FLOP/s for peak compute (a multiply-add counts 2, dense, no structured sparsity), bytes/s for
memory bandwidth, bytes for memory capacity, seconds for the per-op overhead.

The per-op overhead (the floor of the roofline: the time of an op that does almost nothing) is not a
datasheet figure. We use 5 µs for a GPU kernel launch through a framework and 2 µs for an op on a CPU
core; the profiled cost model is the way to calibrate both on a real machine. The overhead is also the
least time of one microbatch of an op (:meth:`placement.CostModel.microbatch_ms`), which is what makes
more microbatches cost something.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from placement.errors import UnknownNameError

TFLOPS = 1e12
GB = 1e9  # decimal gigabytes, as datasheets count bandwidth
GiB = 2**30  # binary gibibytes, as datasheets count memory capacity ("16 GB" HBM2 is 16 GiB)

GPU_OP_OVERHEAD_S = 5e-6
CPU_OP_OVERHEAD_S = 2e-6


@dataclass(frozen=True)
class DeviceSpec:
    """Datasheet figures of one device kind.

    Attributes:
        kind: the kind name devices of this spec carry (``"V100"``: also the label of PipeDream profiles).
        category: ``"gpu"``, ``"cpu"`` or ``"accelerator"``.
        peak_flops: peak FLOP/s per dtype name (``"float32"``, ``"float16"``, ``"bfloat16"``, ...).
        memory_bandwidth: peak device-memory bandwidth, bytes/s.
        memory_bytes: memory capacity, bytes.
        op_overhead_s: the least time of one op (launch and framework overhead), seconds.
        source: the document the figures come from.
    """

    kind: str
    category: str
    peak_flops: dict[str, float] = field(default_factory=dict)
    memory_bandwidth: float = 0.0
    memory_bytes: float = 0.0
    op_overhead_s: float = GPU_OP_OVERHEAD_S
    source: str = ""


def haswell_cpu_flops(cores: int, ghz: float) -> dict[str, float]:
    """Peak FLOP/s of an AVX2 core with two FMA units: 2 FMA x 8 fp32 lanes x 2 FLOPs = 32 per cycle."""
    fp32 = cores * ghz * 1e9 * 32
    return {"float32": fp32, "float64": fp32 / 2}


DEVICE_SPECS: dict[str, DeviceSpec] = {
    spec.kind: spec
    for spec in (
        DeviceSpec(
            kind="V100",
            category="gpu",
            # fp16 is the tensor-core figure; V100 has no bfloat16, the cost model falls back to float32.
            peak_flops={"float64": 7.8 * TFLOPS, "float32": 15.7 * TFLOPS, "float16": 125 * TFLOPS},
            memory_bandwidth=900 * GB,
            memory_bytes=16 * GiB,
            source="NVIDIA Tesla V100 datasheet, SXM2 column (16 GB HBM2; a 32 GB part exists)",
        ),
        DeviceSpec(
            kind="V100-PCIe",
            category="gpu",
            peak_flops={"float64": 7 * TFLOPS, "float32": 14 * TFLOPS, "float16": 112 * TFLOPS},
            memory_bandwidth=900 * GB,
            memory_bytes=32 * GiB,
            source="NVIDIA Tesla V100 datasheet, PCIe column (32 GB HBM2)",
        ),
        DeviceSpec(
            kind="K40",
            category="gpu",
            # Kepler has no fast fp16 path: half precision runs at the fp32 rate.
            peak_flops={"float64": 1.43 * TFLOPS, "float32": 4.29 * TFLOPS, "float16": 4.29 * TFLOPS},
            memory_bandwidth=288 * GB,
            memory_bytes=12 * GiB,
            source="NVIDIA Tesla K40 datasheet (base clock figures, 12 GB GDDR5)",
        ),
        DeviceSpec(
            kind="M40",
            category="gpu",
            # Maxwell GM200: 3072 cores at up to 1.114 GHz; no fast fp16 path, fp64 at 1/32 rate. The GPU
            # of Facebook's Big Sur server (the talk's PCIe-topology study).
            peak_flops={"float64": 0.21 * TFLOPS, "float32": 7 * TFLOPS, "float16": 7 * TFLOPS},
            memory_bandwidth=288 * GB,
            memory_bytes=12 * GiB,
            source="NVIDIA Tesla M40 datasheet (12 GB GDDR5; a 24 GB part came later)",
        ),
        DeviceSpec(
            kind="A100",
            category="gpu",
            peak_flops={
                "float64": 9.7 * TFLOPS,
                "float32": 19.5 * TFLOPS,
                "tf32": 156 * TFLOPS,
                "float16": 312 * TFLOPS,
                "bfloat16": 312 * TFLOPS,
            },
            memory_bandwidth=2039 * GB,
            memory_bytes=80 * GiB,
            source="NVIDIA A100 datasheet, 80 GB SXM column, dense (no sparsity) tensor figures",
        ),
        DeviceSpec(
            kind="H100",
            category="gpu",
            peak_flops={
                "float64": 34 * TFLOPS,
                "float32": 67 * TFLOPS,
                "tf32": 494.7 * TFLOPS,
                "float16": 989.4 * TFLOPS,
                "bfloat16": 989.4 * TFLOPS,
                "float8": 1978.9 * TFLOPS,
            },
            memory_bandwidth=3350 * GB,
            memory_bytes=80 * GiB,
            source="NVIDIA H100 datasheet, SXM5 column; tensor figures are the dense halves of the "
            "with-sparsity numbers the datasheet prints",
        ),
        DeviceSpec(
            kind="Xeon-E5-2699v3",
            category="cpu",
            # 18 Haswell cores at 2.3 GHz; 4 channels of DDR4-2133 = 4 x 17 GB/s.
            peak_flops=haswell_cpu_flops(18, 2.3),
            memory_bandwidth=68 * GB,
            memory_bytes=256 * GiB,
            op_overhead_s=CPU_OP_OVERHEAD_S,
            source="Intel Xeon E5-2699 v3 product brief (18 cores, 2.3 GHz, AVX2, 4 x DDR4-2133); "
            "the 256 GiB of host memory is an assumption",
        ),
    )
}


def spec(kind: str) -> DeviceSpec:
    """The figures of a device kind named in :data:`DEVICE_SPECS`."""
    try:
        return DEVICE_SPECS[kind]
    except KeyError:
        raise UnknownNameError(f"no device spec for kind {kind!r}; known: {', '.join(sorted(DEVICE_SPECS))}") from None
