"""Copying a checkpoint's tensors without holding them: their stored bytes, as they are, in
bounded pieces, into new data files (one per copying worker; a data file needed nearly whole is
hard-linked instead), with a new index for them (checkpoint_index.write_index). Each piece is
checked on its way against the CRC32C the index records for its tensor (stored_tensor), so a
corrupt checkpoint is refused, naming the tensor and the shard, before anything is served from
it. Sources may be local or on an object store (ranged reads through the file layer)."""

import collections.abc
import dataclasses
from typing import Optional

from absl import logging

from freezerlib.core import errors
from freezerlib.core import files
from freezerlib.core import units
from freezerlib.formats import checkpoint_files
from freezerlib.formats import checkpoint_index
from freezerlib.formats import stored_tensor


def slice_records(checkpoint, name, specs):
  """The Records that restoring tensor `name` with each of `specs` reads: every record of the
  tensor when a spec is '' (the whole) or the tensor is not partitioned; else the tensor's own
  entry, listing only those slices, and the slices' records. Copied, they make a checkpoint
  that restores those partitions and holds none of the others (TensorFlow's reader looks a
  slice up through the slices its tensor's entry lists)."""
  if '' in specs or name not in checkpoint.slices:
    return [Record(checkpoint, key, entry) for key, entry in checkpoint.records(name)]
  entry = checkpoint.entries[name]
  shape = [d.size for d in entry.shape.dim]
  wanted = {checkpoint_index.parse_slice_spec(spec)[1] for spec in specs}
  listed = checkpoint_index.tensor_bundle_pb2.BundleEntryProto()
  listed.CopyFrom(entry)
  del listed.slices[:]
  for tensor_slice in entry.slices:
    extents = tuple((e.start, e.length if e.HasField('length') else shape[i] - e.start)
                    for i, e in enumerate(tensor_slice.extent))
    if extents in wanted:
      listed.slices.add().CopyFrom(tensor_slice)
  return [Record(checkpoint, name.encode('utf-8'), listed)] + [
      Record(checkpoint, key, slice_entry) for key, slice_entry in checkpoint.slices[name]
      if checkpoint_index.slice_key_extents(key, shape) in wanted]


def copy_tensors(checkpoint, names, dst_prefix, chunk_bytes=1 << 20, progress=None, verify=True):
  """Writes the tensors `names` of `checkpoint` as a new checkpoint at `dst_prefix` (copy_records).

  The stored bytes of each tensor (and of each slice of a partitioned one) are copied as they
  are, in pieces of at most `chunk_bytes`: checksums, slice layout and dtype encoding stay the
  training checkpoint's own, nothing is decoded, and memory holds one piece at a time.

  Args:
    checkpoint: source checkpoint_index.Checkpoint.
    names: tensor names to copy.
    dst_prefix: prefix of the checkpoint to write (its directory must exist).
    chunk_bytes: bytes read and written at a time.
    progress: optional callable(bytes_done, bytes_total).
    verify: check each tensor's bytes against the checksum its index entry records.

  Returns:
    Bytes of tensor data copied.

  Raises:
    errors.UserError: a data shard that cannot be read, or a tensor that fails its checksum.
  """
  records = [Record(checkpoint, key, entry) for name in names
             for key, entry in checkpoint.records(name)]
  return copy_records(records, dst_prefix, chunk_bytes, progress, verify)


@dataclasses.dataclass
class Record:
  """One index record to copy: `entry` of `checkpoint` (stored under `key` there), written
  under `new_key` (default: the same key)."""
  checkpoint: checkpoint_index.Checkpoint
  key: bytes
  entry: checkpoint_index.tensor_bundle_pb2.BundleEntryProto
  new_key: Optional[bytes] = None


class _Shards:
  """The data shards records are read from, each opened once (read front to back)."""

  def __init__(self):
    self._open = {}  # (checkpoint id, shard) -> open file

  def get(self, record):
    handle = (id(record.checkpoint), record.entry.shard_id)
    if handle not in self._open:
      path = record.checkpoint.data_files()[record.entry.shard_id]
      self._open[handle] = files.open_file(path, 'rb')
    return self._open[handle]

  def close(self):
    for f in self._open.values():
      f.close()


def _transfer(records, write, chunk_bytes, progress, verify):
  """Reads the stored bytes of each record, in order, checking each when `verify`.

  Args:
    records: Records with bytes (entry.size > 0), sorted as they are to be read.
    write: callable(open source file, record, inspect or None, buffer) that moves one record's
      bytes, or None to read them only (to check them).
    chunk_bytes: the size of a piece read through memory.
    progress: callable(bytes) after each piece.
    verify: check each record against its entry's checksum.

  Raises:
    errors.UserError: an unreadable or short shard, or a record that fails its checksum.
  """
  shards = _Shards()
  buffer = bytearray(max(1, min(chunk_bytes, max((r.entry.size for r in records), default=1))))
  current = None
  try:
    for record in records:
      entry, checkpoint = record.entry, record.checkpoint
      current = checkpoint.data_files()[entry.shard_id]
      source = shards.get(record)
      checksum = stored_tensor.Checksum(entry) if verify else None
      try:
        if write is None:
          def consume(piece):
            checksum.update(piece)  # noqa: B023  # consume runs within this iteration only
            progress(len(piece))
          files.read_range(source, entry.offset, entry.size, consume, chunk_bytes, buffer)
        else:
          write(source, record, checksum.update if checksum else None, buffer)
      except EOFError as e:
        raise errors.UserError('checkpoint data shard %s ends early' % current) from e
      if checksum:
        problem = checksum.problem()
        if problem:
          raise checkpoint_index.corrupt_tensor(checkpoint, record.key, entry, problem)
  except OSError as e:
    raise errors.UserError('cannot copy from checkpoint data shard %s: %s'
                          % (current, errors.tf_error_message(e))) from e
  finally:
    shards.close()


_WORKERS = 2  # copy_ranges' workers between local files, each writing a data shard of its own


def copy_records(records, dst_prefix, chunk_bytes=1 << 20, progress=None, verify=True):
  """Writes a checkpoint at `dst_prefix` holding `records`, bytes copied as stored.

  Records may come from several checkpoints. Records that point at the same stored bytes (the
  same checkpoint, shard, offset and size: one tensor written under two keys) share one copy.

  With `verify`, each record's bytes are checked while copied against the checksum its index
  entry records (what TensorFlow's reader checks when it restores them): each piece is read
  into a buffer, checked there and written from it. Without, between local files the kernel
  copies them (copy_file_range). Between local files two workers copy (files.copy_ranges),
  each into a data shard of its own (records dealt by bytes, the largest first): the kernel
  serializes writes into one file. A local data file needed all but 1% is hard-linked (copied
  where the filesystem refuses) instead, its records keeping their offsets, after they are
  checked: a checkpoint without optimizer slots is served from its own files. Elsewhere (a
  path with a scheme) one data shard is written.

  Args:
    records: list of Record.
    dst_prefix: prefix of the checkpoint to write (its directory must exist).
    chunk_bytes: bytes read and written at a time through memory.
    progress: optional callable(bytes_done, bytes_total).
    verify: check each record's bytes against its entry's checksum.

  Returns:
    Bytes of tensor data written.

  Raises:
    errors.UserError: a data shard that cannot be read, or a record that fails its checksum
      (naming the tensor and the shard).
  """
  def source(record):
    entry = record.entry
    return (id(record.checkpoint), entry.shard_id, entry.offset, entry.size)

  unique = {}
  for record in records:
    if record.entry.size:
      unique.setdefault(source(record), record)
  # Sorted by source file and offset, each source file is read front to back.
  ordered = sorted(unique.values(), key=lambda r: (r.checkpoint.prefix,) + source(r)[1:])
  total = sum(r.entry.size for r in ordered)
  written = {}  # source -> (data shard, offset in it)
  done = 0

  def advance(n):
    nonlocal done
    done += n
    if progress:
      progress(done, total)

  # Positional reads and writes: into a local file, from local files or object stores (ranged
  # reads, several in flight: files.copy_ranges). Else (ram://) one data shard, in order.
  local = not files.is_remote(dst_prefix) and all(_positional(r) for r in ordered)
  # Local data files needed (nearly) whole are linked, their records keeping their offsets.
  linked = _needed_whole(ordered) if local else {}
  order = {handle: k for k, handle in enumerate(linked)}  # linked data file -> output shard
  in_place = [r for r in ordered if _data_file(r) in order]
  rest = [r for r in ordered if _data_file(r) not in order]
  shards = (_deal(rest, _WORKERS) if rest or not linked else []) if local else [ordered]
  count = len(linked) + len(shards)
  paths = [checkpoint_files.data_path(dst_prefix, k, count) for k in range(count)]
  for handle, src in linked.items():
    files.link_or_copy(src, paths[order[handle]])
  for record in in_place:
    written[source(record)] = (order[_data_file(record)], record.entry.offset)
  if in_place:
    if verify:  # read and checked in place, two workers
      _copy_local(_deal(in_place, _WORKERS), None, {}, chunk_bytes, advance, True)
    else:
      advance(sum(r.entry.size for r in in_place))
  if local:
    _copy_local(shards, paths[len(linked):], written, chunk_bytes, advance, verify,
                first=len(linked))
  else:
    with files.open_file(paths[0], 'wb') as out:

      def write(src, record, inspect, buffer):
        written[source(record)] = (0, done)
        files.copy_range(src, record.entry.offset, out, record.entry.size, chunk_bytes,
                         advance, inspect, buffer)

      _transfer(ordered, write, chunk_bytes, advance, verify)
  out_records = []
  for record in records:
    copy = checkpoint_index.tensor_bundle_pb2.BundleEntryProto()
    copy.CopyFrom(record.entry)
    copy.shard_id, copy.offset = written[source(record)] if record.entry.size else (0, 0)
    out_records.append((record.new_key or record.key, copy))
  checkpoint_index.write_index(dst_prefix + '.index', out_records, num_shards=count)
  if progress and not total:
    progress(0, 0)
  return done


# A data file of which at most this share is not needed is linked, not copied: a checkpoint
# without optimizer slots holds little but its global step besides what serving restores.
_LINK_SLACK = 0.01


def _positional(record):
  """Whether the record's checkpoint is read by files.copy_ranges: local or an object store."""
  prefix = record.checkpoint.prefix
  return not files.is_remote(prefix) or files.is_object_store(prefix)


def _data_file(record):
  """The data file a record's bytes are in, as (id(checkpoint), shard)."""
  return (id(record.checkpoint), record.entry.shard_id)


def _needed_whole(ordered):
  """{_data_file: path} of the local data files `ordered` needs nearly whole (all but
  _LINK_SLACK of their bytes), in `ordered`'s order."""
  needed = collections.defaultdict(int)
  for record in ordered:
    needed[_data_file(record)] += record.entry.size
  out = {}
  for record in ordered:
    handle = _data_file(record)
    if handle in out or handle not in needed:
      continue
    path = record.checkpoint.data_files()[record.entry.shard_id]
    if files.is_remote(path):
      continue  # linking is for one local file system
    try:
      size = files.size(path)
    except OSError:
      continue  # the copy names it
    if size - needed.pop(handle) <= _LINK_SLACK * size:
      out[handle] = path
  return out


def _deal(ordered, count):
  """`ordered` in at most `count` groups of about equal bytes (the largest record first, each
  to the lightest group), each group in `ordered`'s order; never an empty group but the one
  of an empty list."""
  groups = [[] for _ in range(max(1, min(count, len(ordered))))]
  loads = [0] * len(groups)
  for index in sorted(range(len(ordered)), key=lambda i: -ordered[i].entry.size):
    lightest = loads.index(min(loads))
    groups[lightest].append(index)
    loads[lightest] += ordered[index].entry.size
  return [[ordered[i] for i in sorted(group)] for group in groups]


def _copy_local(shards, paths, written, chunk_bytes, progress, verify, first=0):
  """Copies each of `shards` (lists of records) into its data file of `paths`, a worker each
  (files.copy_ranges), checking each record when `verify`; fills `written` (record source ->
  (first + shard, offset)). With `paths` None the records are read and checked only."""
  checked, shares = [], []
  try:
    for k, (shard, path) in enumerate(zip(shards, paths or [None] * len(shards))):
      jobs, offset = [], 0
      for record in shard:
        entry = record.entry
        written[(id(record.checkpoint), entry.shard_id, entry.offset, entry.size)] = (
            first + k, offset)
        checksum = stored_tensor.Checksum(entry) if verify else None
        checked.append((record, checksum))
        jobs.append((record.checkpoint.data_files()[entry.shard_id], entry.offset, entry.size,
                     offset, checksum.update if checksum else None))
        offset += entry.size
      shares.append((files.open_file(path, 'wb') if path else None, jobs))
    files.copy_ranges(shares, chunk_bytes, progress)
  except EOFError as e:
    raise errors.UserError('checkpoint data shard %s (it ends early)' % e) from e
  except OSError as e:
    raise errors.UserError('cannot copy checkpoint tensors: %s' % errors.tf_error_message(e)) from e
  finally:
    for out, _ in shares:
      if out is not None:
        out.close()
  for record, checksum in checked:
    problem = checksum and checksum.problem()
    if problem:
      raise checkpoint_index.corrupt_tensor(record.checkpoint, record.key, record.entry, problem)


def verify_records(records, chunk_bytes=1 << 20, progress=None):
  """Reads the stored bytes of `records` and checks each against its entry's checksum.

  Raises:
    errors.UserError: an unreadable shard, or a record that fails its checksum.
  """
  ordered = sorted((r for r in records if r.entry.size),
                   key=lambda r: (r.checkpoint.prefix, r.entry.shard_id, r.entry.offset))
  total, done = sum(r.entry.size for r in ordered), 0

  def advance(n):
    nonlocal done
    done += n
    if progress:
      progress(done, total)

  if not all(_positional(r) for r in ordered):
    _transfer(ordered, None, chunk_bytes, advance, True)
  else:  # read and checked by two workers (files.copy_ranges, reading only)
    _copy_local(_deal(ordered, _WORKERS), None, {}, chunk_bytes, advance, True)


def link_files(checkpoint, dst_prefix, verify=False):
  """Makes DST_PREFIX.{index,data-*} the files of `checkpoint`, hard-linked where the
  filesystem allows, else copied.

  Args:
    checkpoint: the checkpoint_index.Checkpoint.
    dst_prefix: the prefix to link it as.
    verify: first read every stored tensor and check it against its entry's checksum.

  Returns:
    (tensors, bytes of tensor data) the checkpoint holds.

  Raises:
    errors.UserError: with `verify`, a tensor that fails its checksum (nothing linked then).
  """
  if verify:
    verify_records([Record(checkpoint, key, entry) for name in checkpoint.entries
                    for key, entry in checkpoint.records(name)],
                   progress=units.Progress('checking checkpoint checksums'))
  pairs = [(checkpoint.prefix + '.index', dst_prefix + '.index')]
  pairs += [(src, checkpoint_files.data_path(dst_prefix, k, checkpoint.num_shards))
            for k, src in enumerate(checkpoint.data_files())]
  sizes = [files.size(src) for src, _ in pairs]
  progress, done = units.Progress('linking checkpoint files'), 0
  for (src, dst), size in zip(pairs, sizes):
    files.link_or_copy(src, dst)
    done += size
    progress(done, sum(sizes))
  return len(checkpoint.entries), sum(checkpoint.nbytes(n) for n in checkpoint.entries)


def link_checkpoint(prefix, dst_prefix):
  """Hard-links (or copies) the files of checkpoint `prefix` to `dst_prefix`, after checking
  its index and shards."""
  tensors, nbytes = link_files(checkpoint_index.read_index(prefix), dst_prefix)
  logging.info('linked %s (%d tensors, %s) as %s', prefix, tensors, units.human_bytes(nbytes),
               dst_prefix)
