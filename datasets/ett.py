"""ETT (Electricity Transformer Temperature; Zhou et al., Informer, AAAI 2021) loaded from a CSV by path.

Files: ETTh1 / ETTh2 (hourly) and ETTm1 / ETTm2 (15-minute), columns ``date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT``.
The data are never copied into the repository (CC BY-ND 4.0): pass the path of your copy.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from armt_ts.data import Split, TimeSeriesFrame, read_wide, standard_split

ETT_NAMES = ("ETTh1", "ETTh2", "ETTm1", "ETTm2")
ETT_CHANNELS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
# The step is given, not inferred, so a file with a gap or a stray timestamp is caught on load.
_FREQ = {"h": "1h", "m": "15m"}


def ett_name(path: str | os.PathLike) -> str:
    """ETTh1 / ETTh2 / ETTm1 / ETTm2 from a file name such as ``ETTh1.csv`` or ``my_ETTm2.parquet``."""
    found = re.search(r"ETT[hm][12]", Path(path).name, flags=re.IGNORECASE)
    if found is None:
        raise ValueError(f"cannot tell the ETT dataset from the file name {Path(path).name!r}; "
                         f"pass name= (one of {ETT_NAMES})")
    text = found.group(0)
    return "ETT" + text[3].lower() + text[4]


def load_ett(path: str | os.PathLike, name: str | None = None) -> TimeSeriesFrame:
    """Load an ETT file as a [T, C] frame (C = 7: HUFL, HULL, MUFL, MULL, LUFL, LULL, OT).

    ``name`` (ETTh1 / ETTh2 / ETTm1 / ETTm2, inferred from the file name) sets the expected step.
    """
    name = name or ett_name(path)
    if name not in ETT_NAMES:
        raise ValueError(f"name={name!r} must be one of {ETT_NAMES}")
    frame = read_wide(path, timestamp="date", freq=_FREQ[name[3]])
    if frame.channels != ETT_CHANNELS:
        raise ValueError(f"{path}: the columns {frame.channels} are not {name}'s ({ETT_CHANNELS}); is it an ETT file?")
    check_grid(frame, name)
    return frame


def check_grid(frame: TimeSeriesFrame, name: str, least: float = 0.9) -> None:
    """Refuse a file whose rows fill under ``least`` of the dataset's grid: another dataset's file (an hourly file
    read as 15-minute ETTm1 leaves 3 of 4 steps empty), not gaps to mask."""
    rows = frame.rows_per_step
    filled = float((rows > 0).mean()) if rows is not None and rows.size else 1.0
    if filled < least:
        raise ValueError(f"{frame.source}: only {filled:.0%} of the {frame.freq} grid steps have a row, so the file "
                         f"is not {name} (whose step is {frame.freq}); check --data / --dataset")


def load_ett_split(path: str | os.PathLike, context_length: int, name: str | None = None) -> Split:
    """Load an ETT file and split it under the standard protocol (DESIGN section 7; borders x4 for ETTm)."""
    name = name or ett_name(path)
    return standard_split(load_ett(path, name), name, context_length)
