"""``pulsebms-bench``: run the project's benchmarks and print their figures.

Each benchmark module exposes ``main(argv) -> int`` and ends its output with one line
``RESULT {json}``. This front end runs one or all of them in one process, so figures that
are compared (ratios) are taken side by side on the same machine state, and closes with a
combined ``RESULT {json}`` line.

Example:
    $ pulsebms-bench shield --quick
    $ pulsebms-bench edge --quick
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import sys
import time

__all__ = ["BENCHMARKS", "main"]

BENCHMARKS: dict[str, str] = {
    "twin": "pulsebms.benchmarks.twin",
    "shield": "pulsebms.benchmarks.shield",
    "edge": "pulsebms.benchmarks.edge",
    "estimation": "pulsebms.benchmarks.estimation",
    "ray": "pulsebms.benchmarks.ray",
    "allocation": "pulsebms.benchmarks.allocation",
    "mqtt": "pulsebms.benchmarks.mqtt",
}


class _Tee(io.TextIOBase):
    """Write to the real stdout and keep a copy, to read back each ``RESULT`` line."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self._stream = stream
        self.buffer_text = io.StringIO()

    def write(self, s: str) -> int:
        self._stream.write(s)
        self._stream.flush()
        return self.buffer_text.write(s)


def _last_result(text: str) -> dict[str, object] | None:
    for line in reversed(text.splitlines()):
        if line.startswith("RESULT "):
            parsed = json.loads(line[len("RESULT ") :])
            return parsed if isinstance(parsed, dict) else {"value": parsed}
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks and print a combined ``RESULT {json}`` line.

    Args:
        argv: Command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        Process exit code: 0 when every benchmark returned 0.
    """
    parser = argparse.ArgumentParser(prog="pulsebms-bench", description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=[*BENCHMARKS, "all"], nargs="?", default="all")
    parser.add_argument("--quick", action="store_true", help="small settings (CI smoke)")
    args, rest = parser.parse_known_args(argv)
    names = list(BENCHMARKS) if args.which == "all" else [args.which]
    combined: dict[str, object] = {}
    status = 0
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        sub_argv = [*rest, *(["--quick"] if args.quick else [])]
        print(f"== {name} ({' '.join(sub_argv) or 'full'}) ==", flush=True)
        tee = _Tee(sys.stdout)  # type: ignore[arg-type]
        start = time.perf_counter()
        with contextlib.redirect_stdout(tee):
            code = int(module.main(sub_argv))
        status = status or code
        result = _last_result(tee.buffer_text.getvalue())
        combined[name] = {"exit_code": code, "wall_s": round(time.perf_counter() - start, 2)}
        if result is not None:
            combined[name] = {**result, **combined[name]}  # type: ignore[dict-item]
    print("RESULT " + json.dumps(combined, sort_keys=True))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
