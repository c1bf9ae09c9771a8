from vramplan.units import GIB, nbytes


def test_int4_never_rounds_to_zero() -> None:
    assert nbytes(1, "int4") == 1
    assert nbytes(3, "nf4") == 2
    assert nbytes(4, "int4") == 2


def test_bytes_per_dtype() -> None:
    assert nbytes(10, "fp32") == 40
    assert nbytes(10, "bf16") == 20
    assert nbytes(GIB, "int8") == GIB
