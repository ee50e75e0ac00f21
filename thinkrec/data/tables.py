"""Reading the user's files into pandas tables of strings, whatever their format: RecBole atomic files
(.inter/.item/.user, tab-separated with `name:type` headers), .csv, .tsv, .jsonl and .parquet. Every
value stays a string here (ids keep their leading zeros); the loader parses numbers and times and
names the file, line and column of any value it cannot read."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

from thinkrec.errors import ThinkRecError

ATOMIC = (".inter", ".item", ".user")
LINE = "__line__"  # the column holding each row's line number in its file (1 = the header)


def read_table(path: Path, sep: str = "", encoding: str = "utf-8") -> pd.DataFrame:
    """The file as a table of strings, with its line numbers in LINE (file order is kept: it breaks
    ties between equal timestamps)."""
    if not path.exists():
        raise ThinkRecError(f"data file {path} is missing")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = _as_text(pd.read_parquet(path))
            df[LINE] = range(1, len(df) + 1)
        elif suffix in (".jsonl", ".json"):
            with path.open(encoding=encoding) as f:  # numbers stay as written: id 007 is not 7.0
                records = [json.loads(line, parse_int=str, parse_float=str) for line in f if line.strip()]
            df = _as_text(pd.DataFrame.from_records(records))
            df[LINE] = range(1, len(df) + 1)
        else:
            delimiter = sep or ("," if suffix == ".csv" else "\t")
            df = pd.read_csv(
                path,
                sep=delimiter,
                dtype=str,
                keep_default_na=False,
                skip_blank_lines=False,  # so a row's index is its line in the file
                quoting=csv.QUOTE_NONE if suffix in ATOMIC else csv.QUOTE_MINIMAL,
                encoding=encoding,
                engine="c" if len(delimiter) == 1 else "python",
            )
            df.columns = [str(c).split(":", 1)[0] if suffix in ATOMIC else str(c) for c in df.columns]
            df[LINE] = range(2, len(df) + 2)
            df = df[(df.drop(columns=LINE) != "").any(axis=1)]  # blank lines hold no row
    except UnicodeDecodeError as e:
        raise ThinkRecError(
            f"{path} line {_bad_line(path, encoding)}: bytes that are not {encoding} ({e.reason})"
        ) from None
    except (pd.errors.ParserError, ValueError, OSError, json.JSONDecodeError) as e:
        raise ThinkRecError(f"{path}: cannot be read as a {suffix or 'text'} table ({e})") from None
    if df.empty:
        raise ThinkRecError(f"data file {path} has no rows")
    return df


def _as_text(df: pd.DataFrame) -> pd.DataFrame:
    """Every cell a string ("" for a missing one); list cells (JSONL arrays, Parquet lists) stay lists."""

    def text(v):
        if isinstance(v, list | tuple) or hasattr(v, "tolist") and not isinstance(v, str | bytes):
            return [str(x) for x in (v.tolist() if hasattr(v, "tolist") else v)]
        return "" if v is None or (isinstance(v, float) and v != v) else str(v)

    return pd.DataFrame({c: [text(v) for v in df[c].tolist()] for c in df.columns}, dtype=object)


def _bad_line(path: Path, encoding: str) -> int:
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError:
                return number
    return 0


def require_columns(df: pd.DataFrame, path: Path, roles: dict[str, str]) -> None:
    """Every role's column is in the file; the error names the role, the column and what there is."""
    have = [c for c in df.columns if c != LINE]
    for role, column in roles.items():
        if column and column not in df.columns:
            raise ThinkRecError(
                f"{path}: no column {column!r} (the config's {role}); its columns are {', '.join(have)}"
            )


def numbers(df: pd.DataFrame, column: str, path: Path, what: str) -> pd.Series:
    """The column as floats; an empty or unreadable value is an error naming its line."""
    values = pd.to_numeric(df[column].str.strip(), errors="coerce")
    bad = values.isna()
    if bad.any():
        row = df[bad].iloc[0]
        raise ThinkRecError(f"{path} line {row[LINE]}: {what} column {column!r} has {row[column]!r}, not a number")
    return values


def write_atomic(df: pd.DataFrame, types: dict[str, str], path: Path) -> None:
    """A RecBole atomic file: tab-separated, `name:type` headers (token, token_seq, float)."""
    out = df[list(types)].copy()
    out.columns = [f"{c}:{t}" for c, t in types.items()]
    # RecBole reads no quoting or escapes: a tab or newline inside a value becomes a space
    out = out.astype(str).apply(lambda col: col.str.replace(r"[\t\r\n]", " ", regex=True))
    rows = map("\t".join, out.itertuples(index=False, name=None))
    path.write_text("\t".join(out.columns) + "\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
