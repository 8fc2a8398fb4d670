"""Loss inputs read from files, for ``numbaloss score``: .npy, .npz, .csv, .parquet.

:func:`open_array` gives an :class:`ArrayFile` whatever the format: ``rows`` (the
length of the first axis, None where it is only known at the end: CSV),
``row_elements`` (elements per row, to size the chunks), ``read()`` (the whole
array) and ``chunks(rows)`` (consecutive blocks of exactly
``rows`` rows, the last one shorter), which never holds more than a block, so a
file larger than memory can be scored.  ``fraction_read`` drives a progress bar.

Choosing what to read in a file holding several arrays or columns: an explicit
``key`` (an .npz member, a CSV/Parquet column); else the array or column named
like the loss input (``y_true``, ``y_pred``, …); else the only array of an .npz,
or every column of a table except the ones named like the loss's other inputs
and ``sample_weight`` (so one table with columns ``y_true, p0, p1, p2,
sample_weight`` serves both inputs of ``categorical_cross_entropy`` and its
weights).
"""

from __future__ import annotations

import itertools
import math
import os
import zipfile

import numpy as np

SUFFIXES = (".npy", ".npz", ".csv", ".parquet")


class InputFileError(ValueError):
    """A file that cannot be read as a loss input; the message names the file."""


def open_array(path: str, key: str | None = None, prefer: str | None = None, exclude=()) -> "ArrayFile":
    """The reader for ``path`` chosen by its suffix (see the module docstring for
    ``key``, ``prefer`` (the input's name) and ``exclude`` (the other inputs' names))."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise InputFileError(f"{path}: unknown file type {suffix or '(no suffix)'!r}; "
                             f"the readers take {', '.join(SUFFIXES)}")
    if not os.path.exists(path):
        raise InputFileError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise InputFileError(f"{path}: not a file")
    reader = {".npy": NpyFile, ".npz": NpzMember, ".csv": CsvFile, ".parquet": ParquetFile}[suffix]
    return reader(path, key, prefer, tuple(exclude))


class ArrayFile:
    """Base of the readers: exact-size chunks assembled from the blocks ``_blocks``
    yields (of whatever size the format reads best)."""

    path: str
    rows: int | None = None
    row_elements: int = 1

    def __init__(self, path):
        self.path = path
        self.rows_read = 0

    @property
    def fraction_read(self) -> float:
        return self.rows_read / self.rows if self.rows else 1.0

    def _blocks(self, rows: int):
        raise NotImplementedError  # each format implements it

    def chunks(self, rows: int):
        """Consecutive blocks of exactly ``rows`` rows (the last one shorter)."""
        self.rows_read = 0
        pending, pending_rows = [], 0
        for block in self._blocks(rows):
            pending.append(block)
            pending_rows += len(block)
            while pending_rows >= rows:
                joined = pending[0] if len(pending) == 1 else np.concatenate(pending)
                yield joined[:rows]
                pending, pending_rows = [joined[rows:]], pending_rows - rows
        if pending_rows:
            yield pending[0] if len(pending) == 1 else np.concatenate(pending)

    def read(self) -> np.ndarray:
        """The whole array."""
        self.rows_read = 0
        blocks = list(self._blocks(1 << 16))
        return np.concatenate(blocks) if blocks else self._empty()

    def _empty(self) -> np.ndarray:
        width = len(self.columns)
        return np.empty((0,) if width == 1 else (0, width))

    def _fail(self, what, exc=None) -> InputFileError:
        return InputFileError(f"{self.path}: {what}" + (f": {exc}" if exc is not None else ""))


class NpyFile(ArrayFile):
    """A .npy file, memory-mapped; a chunk (or the whole array) is copied out of the
    read-only mapping, so the kernels see the writeable arrays they were compiled for."""

    def __init__(self, path, key, prefer, exclude):
        super().__init__(path)
        if key is not None:
            raise self._fail(f"--key {key!r} given, but a .npy file holds a single array")
        try:
            self._array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise self._fail("cannot read as .npy", exc) from None
        self.rows = self._array.shape[0] if self._array.ndim else None
        self.row_elements = math.prod(self._array.shape[1:])

    def _blocks(self, rows):
        if self._array.ndim == 0:
            raise self._fail("holds a 0-d array; a loss input needs a first axis of rows")
        for start in range(0, self.rows, rows):
            block = np.array(self._array[start:start + rows])
            self.rows_read += len(block)
            yield block

    def read(self):
        return np.array(self._array)


class NpzMember(ArrayFile):
    """One array of an .npz archive (compressed or not), streamed row block by row
    block from the zip member; Fortran-ordered arrays are read whole."""

    def __init__(self, path, key, prefer, exclude):
        super().__init__(path)
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
        except (OSError, zipfile.BadZipFile) as exc:
            raise self._fail("cannot read as .npz", exc) from None
        if key is not None:
            if key not in names:
                raise self._fail(f"has no array {key!r}; it holds {', '.join(names) or 'none'}")
            self.key = key
        elif prefer in names:
            self.key = prefer
        elif len(names) == 1:
            self.key = names[0]
        else:
            raise self._fail(f"holds the arrays {', '.join(names) or '(none)'}; choose one with --key")
        with self._open() as member:
            self.shape, self._fortran, self.dtype = self._header(member)
        if self.dtype.hasobject or self.dtype.names is not None:
            raise self._fail(f"array {self.key!r} has dtype {self.dtype}; a loss input must be numeric")
        self.rows = self.shape[0] if self.shape else None
        self.row_elements = math.prod(self.shape[1:])

    def _open(self):
        archive = zipfile.ZipFile(self.path)
        return archive.open(self.key + ".npy")

    def _header(self, member):
        fmt = np.lib.format
        try:
            version = fmt.read_magic(member)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            return read(member)
        except ValueError as exc:
            raise self._fail(f"array {self.key!r} is not a valid .npy member", exc) from None

    def _blocks(self, rows):
        if not self.shape:
            raise self._fail(f"array {self.key!r} is 0-d; a loss input needs a first axis of rows")
        if self._fortran and len(self.shape) > 1:  # rows are not contiguous in the stream
            whole = self.read()
            self.rows_read = self.rows
            yield whole
            return
        row_shape = self.shape[1:]
        row_bytes = self.dtype.itemsize * math.prod(row_shape)
        with self._open() as member:
            self._header(member)
            for start in range(0, self.rows, rows):
                count = min(rows, self.rows - start)
                block = np.empty((count,) + row_shape, dtype=self.dtype)
                target = memoryview(block).cast("B")
                filled = 0
                while filled < count * row_bytes:
                    got = member.readinto(target[filled:])
                    if not got:
                        raise self._fail(f"array {self.key!r} ends early (truncated archive)")
                    filled += got
                self.rows_read += count
                yield block

    def read(self):
        with np.load(self.path, allow_pickle=False) as archive:
            return archive[self.key]


def _select_columns(reader, names, key, prefer, exclude) -> list:
    """The column names to read (see the module docstring)."""
    if key is not None:
        if key not in names:
            raise reader._fail(f"has no column {key!r}; its columns are {', '.join(names)}")
        return [key]
    if prefer in names:
        return [prefer]
    chosen = [n for n in names if n not in exclude]
    if not chosen:
        raise reader._fail(f"has no column to read (columns {', '.join(names)})")
    return chosen


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


class CsvFile(ArrayFile):
    """A comma-separated file of numbers, parsed block by block.

    The first line is a header when any of its fields is not a number.  The values
    are int64 when the first data row's selected fields are all integers (class
    labels stay labels), else float64.  One selected column gives a 1-D array,
    several a 2-D array of shape (rows, columns).
    """

    def __init__(self, path, key, prefer, exclude):
        super().__init__(path)
        self._size = os.path.getsize(path)
        self._bytes_read = 0
        try:
            with open(path, "rb") as fh:
                lines = [line for line in itertools.islice(fh, 2)]
        except OSError as exc:
            raise self._fail("cannot read", exc) from None
        fields = [self._split(line) for line in lines]
        if not fields or fields[0] == [""]:
            raise self._fail("is empty")
        first = fields[0]
        self._has_header = not all(_is_number(f) for f in first)
        if self._has_header:
            names = [f.strip('"\'') for f in first]
            columns = _select_columns(self, names, key, prefer, exclude)
            self._usecols = [names.index(c) for c in columns]
            data_row = fields[1] if len(fields) > 1 else None
        else:
            if key is not None:
                raise self._fail(f"--key {key!r} names a column, but the file has no header row")
            self._usecols = list(range(len(first)))
            data_row = first
        integers = data_row is not None and all(
            i < len(data_row) and _is_integer(data_row[i]) for i in self._usecols)
        self.dtype = np.dtype(np.int64 if integers else np.float64)
        self.row_elements = len(self._usecols)

    @staticmethod
    def _split(line: bytes) -> list:
        return [f.strip() for f in line.decode("utf-8", "replace").strip().split(",")]

    @property
    def fraction_read(self) -> float:
        return self._bytes_read / self._size if self._size else 1.0

    def _blocks(self, rows):
        with open(self.path, "rb") as fh:
            line_number = 1
            if self._has_header:
                fh.readline()
                line_number = 2
            while True:
                lines = [line.decode("utf-8", "replace") for line in itertools.islice(fh, rows)]
                self._bytes_read = fh.tell()
                data = [line for line in lines if line.strip()]
                if data:
                    try:
                        block = np.loadtxt(data, delimiter=",", dtype=self.dtype, usecols=self._usecols,
                                           ndmin=2)
                    except ValueError as exc:
                        raise self._fail(f"in the {len(lines)} lines from line {line_number}", exc) from None
                    self.rows_read += len(block)
                    yield block[:, 0] if len(self._usecols) == 1 else block
                if len(lines) < rows:
                    return
                line_number += len(lines)

    @property
    def columns(self):
        return self._usecols


class ParquetFile(ArrayFile):
    """Numeric columns of a Parquet file (through pyarrow), read in record batches.

    Several scalar columns give a (rows, columns) array; a single list column
    (every list of one length K) gives a (rows, K) array.
    """

    def __init__(self, path, key, prefer, exclude):
        super().__init__(path)
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise self._fail("reading .parquet files needs pyarrow (pip install 'numbaloss[io]')") from None
        import pyarrow as pa

        self._pa = pa
        try:
            self._file = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as exc:
            raise self._fail("cannot read as .parquet", exc) from None
        schema = self._file.schema_arrow
        self.columns = _select_columns(self, schema.names, key, prefer, exclude)
        for name in self.columns:
            kind = schema.field(name).type
            is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
            if is_list and len(self.columns) > 1:
                raise self._fail(f"column {name!r} holds lists; select it alone with --key")
            scalar = kind.value_type if is_list else kind
            if not (pa.types.is_integer(scalar) or pa.types.is_floating(scalar) or pa.types.is_boolean(scalar)):
                raise self._fail(f"column {name!r} has type {kind}; a loss input must be numeric")
        self.rows = self._file.metadata.num_rows
        self.row_elements = self._list_width() if len(self.columns) == 1 else len(self.columns)

    def _list_width(self) -> int:
        """Values per row of a single list column, from the first row group's
        metadata (1 for a scalar column)."""
        meta = self._file.metadata
        if not meta.num_row_groups or not meta.row_group(0).num_rows:
            return 1
        group = meta.row_group(0)
        index = next(i for i in range(group.num_columns)
                     if group.column(i).path_in_schema.split(".")[0] == self.columns[0])
        return max(1, group.column(index).num_values // group.num_rows)

    def _column(self, name, array) -> np.ndarray:
        pa = self._pa
        if array.null_count:
            raise self._fail(f"column {name!r} has {array.null_count} missing value(s)")
        if not pa.types.is_list(array.type) and not pa.types.is_large_list(array.type) \
                and not pa.types.is_fixed_size_list(array.type):
            return array.to_numpy(zero_copy_only=False, writable=True)
        values = array.flatten()
        if values.null_count:
            raise self._fail(f"column {name!r} has missing values inside its lists")
        lengths = np.asarray(array.value_lengths())
        if len(lengths) and (lengths != lengths[0]).any():
            raise self._fail(f"column {name!r} holds lists of different lengths")
        width = int(lengths[0]) if len(lengths) else 0
        return values.to_numpy(zero_copy_only=False, writable=True).reshape(len(array), width)

    def _blocks(self, rows):
        try:
            for batch in self._file.iter_batches(batch_size=rows, columns=self.columns):
                arrays = [self._column(name, batch.column(name)) for name in self.columns]
                block = arrays[0] if len(arrays) == 1 else np.column_stack(arrays)
                self.rows_read += len(block)
                yield block
        except self._pa.ArrowException as exc:
            raise self._fail("cannot read as .parquet", exc) from None
