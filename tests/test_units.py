"""Units: bits are never confused with bytes; every quantity needs its unit."""

import pytest

from planner.units import format_time, parse_bandwidth, parse_memory, parse_time

GIB = 1024**3


def test_bits_and_bytes_per_second():
    assert parse_bandwidth("10 Gbit/s") == pytest.approx(1.25e9)
    assert parse_bandwidth("1.25 GB/s") == pytest.approx(1.25e9)
    assert parse_bandwidth("10 Gbit/s") == pytest.approx(parse_bandwidth("1.25 GB/s"))
    assert parse_bandwidth("100 Mbit/s") == pytest.approx(12.5e6)
    assert parse_bandwidth("15.7 GB/s") == pytest.approx(15.7e9)
    assert parse_bandwidth("800 MiB/s") == pytest.approx(800 * 1024**2)
    assert parse_bandwidth("1 Tbit/s") == pytest.approx(125e9)


def test_bandwidth_whitespace_and_exponent():
    assert parse_bandwidth("  10Gbit/s ") == pytest.approx(1.25e9)
    assert parse_bandwidth("1e3 MB/s") == pytest.approx(1e9)


def test_times():
    assert parse_time("0.5 ms") == pytest.approx(0.5e-3)
    assert parse_time("50 us") == pytest.approx(50e-6)
    assert parse_time("50 µs") == pytest.approx(50e-6)
    assert parse_time("0.2 s") == pytest.approx(0.2)
    assert parse_time("0 ms") == 0.0


@pytest.mark.parametrize("seconds, shown", [(0.0, "0 us"), (5e-7, "0.5 us"), (0.000999, "999 us"),
                                             (0.0009996, "1 ms"), (0.0123, "12.3 ms"), (0.99962, "1 s"),
                                             (12.345, "12.3 s"), (999.6, "1,000 s"), (4321.0, "4,321 s")])
def test_times_are_shown_in_the_unit_that_keeps_them_under_a_thousand(seconds, shown):
    """A TPOT of 0.9996 s was printed as "1e+03 ms": rounding to three figures can carry into the next unit."""
    assert format_time(seconds) == shown
    assert parse_time(shown.replace(",", "")) == pytest.approx(seconds, rel=6e-3, abs=1e-9)


def test_memory():
    assert parse_memory("24 GiB") == 24 * GIB
    assert parse_memory("11 GB") == pytest.approx(11e9)
    assert parse_memory("512 MiB") == 512 * 1024**2
    assert parse_memory("22.5 GiB") == pytest.approx(22.5 * GIB)


@pytest.mark.parametrize("text", [
    "10 Gbps",      # 'ps' is not a unit: write Gbit/s
    "10 Mbps",
    "10 GB",        # a size, not a rate
    "10",           # no unit
    "fast",         # no number
    "-10 Gbit/s",   # negative
    "10 Gfoo/s",    # unknown unit
    "",
])
def test_bad_bandwidth(text):
    with pytest.raises(ValueError):
        parse_bandwidth(text)


@pytest.mark.parametrize("text", ["0.5", "5 sec", "-1 ms", "1 GB", "ms"])
def test_bad_time(text):
    with pytest.raises(ValueError):
        parse_time(text)


@pytest.mark.parametrize("text", ["24", "24 Gb", "24 gigs", "-1 GiB", "24 GB/s"])
def test_bad_memory(text):
    with pytest.raises(ValueError):
        parse_memory(text)


def test_ambiguous_gb_says_so():
    with pytest.raises(ValueError, match="ambiguous"):
        parse_memory("24 Gb")


def test_bandwidth_needs_per_second():
    with pytest.raises(ValueError, match="/s"):
        parse_bandwidth("10 Gbit")
