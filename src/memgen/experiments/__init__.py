"""One module per experiment family: parameters of each step from the config, the
sweep's points, and the tidy summary."""

from pathlib import Path


def write_csv(df, path) -> None:
    """Atomic CSV write (temp file + rename), full float precision."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False, float_format="%.10g")
    tmp.replace(path)
