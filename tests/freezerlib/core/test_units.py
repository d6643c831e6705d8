"""core/units: sizes as people write them and read them, progress of long steps."""

import pytest

from freezerlib.core import errors
from freezerlib.core import units


@pytest.mark.parametrize('n,text', [
    (0, '0 B'), (1023, '1023 B'), (1024, '1.0 KiB'), (1536, '1.5 KiB'), (1572864, '1.5 MiB'),
    (3 << 30, '3.0 GiB'), (5 << 40, '5120.0 GiB'), (2.5, '2 B')])
def test_human_bytes(n, text):
  assert units.human_bytes(n) == text


@pytest.mark.parametrize('text,expected', [
    ('64MiB', 64 << 20), ('1.5GB', 1500000000), ('500000', 500000), ('2KB', 2000),
    ('3kib', 3072), ('1GiB', 1 << 30), (' 7 MB ', 7000000), ('.5KiB', 512), ('10b', 10),
    ('4.gb', 4000000000)])
def test_parse_size(text, expected):
  assert units.parse_size(text, '--flag') == expected


@pytest.mark.parametrize('text', ['12XB', '-5MB', '1.5.2GB', '', 'MB', 'ten'])
def test_parse_size_names_the_flag_and_the_alternative(text):
  with pytest.raises(errors.UserError) as caught:
    units.parse_size(text, '--keep', ", or 'off'")
  message = str(caught.value)
  assert message.startswith('--keep=%s is not a size' % text.strip())
  assert message.endswith("GiB), or 'off'")


@pytest.mark.parametrize('nbytes,spec', [
    ((525 << 20) + 12345, '525MiB'), (1 << 20, '1MiB'), ((1 << 20) - 1, '1048575'), (0, '0')])
def test_size_spec_is_a_size_parse_size_reads_back_not_above(nbytes, spec):
  assert units.size_spec(nbytes) == spec
  assert units.parse_size(spec, 'x') <= nbytes


def test_progress_logs_at_most_every_interval_and_at_the_end(monkeypatch):
  lines = []
  monkeypatch.setattr(units.logging, 'info', lambda fmt, *args: lines.append(fmt % args))
  clock = iter([0.0, 1.0, 2.0, 10.0, 11.0])
  monkeypatch.setattr(units.time, 'perf_counter', lambda: next(clock))
  progress = units.Progress('copying', every=5.0)  # starts at 0.0
  progress(100, 1000)  # 1.0: too soon
  progress(200, 1000)  # 2.0: too soon
  progress(500, 1000)  # 10.0: logged
  progress(1000, 1000)  # 11.0: done, logged however soon
  assert lines == ['copying: 500 B of 1000 B (50%), 50 B/s',
                   'copying: 1000 B of 1000 B (100%), 90 B/s']
