"""bench.machine: /proc/cpuinfo parsing (fixture text) and the machine description's shape."""

import json

from bench.machine import describe, parse_cpuinfo, vector_extensions

# Two processors of an AVX2-only AMD EPYC (trimmed); the second block must not be needed.
EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes
bugs\t\t: sysret_ss_attrs

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: Something Else
flags\t\t: fpu avx512f
"""

SAPPHIRE_RAPIDS_FLAGS = (
    "flags : sse4_2 avx avx2 fma f16c avx512f avx512bw avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8"
)

# aarch64 (Graviton 3): no "model name", features under "Features".
GRAVITON = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm asimddp sve i8mm bf16
CPU implementer\t: 0x41
CPU part\t: 0xd40

processor\t: 1
Features\t: fp
"""


def test_x86_model_and_extensions_come_from_the_first_processor() -> None:
    model, flags = parse_cpuinfo(EPYC)
    assert model == "AMD EPYC 7B13"
    assert "avx512f" not in flags  # that flag is only in the second block
    assert vector_extensions(flags) == ["sse4_2", "avx", "avx2", "fma", "f16c"]


def test_every_listed_x86_extension_is_found_in_list_order() -> None:
    _, flags = parse_cpuinfo(SAPPHIRE_RAPIDS_FLAGS)
    assert vector_extensions(flags) == [
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx512_bf16",
        "avx_vnni",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
    ]


def test_arm_features_and_a_missing_model_name() -> None:
    model, flags = parse_cpuinfo(GRAVITON)
    assert model is None
    assert vector_extensions(flags) == ["asimd", "asimddp", "i8mm", "bf16", "sve"]
    assert parse_cpuinfo("") == (None, set())


def test_describe_is_json_ready_and_falls_back_without_cpuinfo(tmp_path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(EPYC)
    described = describe(cpuinfo)
    json.dumps(described)
    assert described["cpu_model"] == "AMD EPYC 7B13"
    assert described["vector_extensions"] == ["sse4_2", "avx", "avx2", "fma", "f16c"]
    assert described["logical_cores"] >= 1
    assert "float32" in described["cpu_compute_types"]
    assert described["cpu_compute_types"] == sorted(described["cpu_compute_types"])
    assert isinstance(described["cuda_available"], bool) and isinstance(described["cuda_compute_types"], list)
    assert described["ctranslate2_version"] and described["python"].count(".") == 2
    assert len(described["load_average"]) == 3

    missing = describe(tmp_path / "absent")
    assert missing["vector_extensions"] == [] and missing["cpu_model"]  # platform's answer instead
