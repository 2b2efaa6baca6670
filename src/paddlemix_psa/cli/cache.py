"""`paddlemix-psa cache`: the downloaded media (one file per URL), their total size, and `--clear`."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import exit_codes
from .infer import CliError, guarded


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "cache", help="list or clear the media downloaded for http(s) inputs",
        description="Lists the files downloaded for http(s) --input URLs (one complete file per URL; partial "
                    "files of running or interrupted downloads are shown apart) with their total size; "
                    "--clear deletes them. The directory is $PADDLEMIX_PSA_CACHE/media, else "
                    "~/.cache/paddlemix_psa/media.",
        epilog=exit_codes.epilog())
    p.add_argument("--clear", action="store_true",
                   help="delete every cached download and every partial file no running download is writing")
    p.add_argument("--dir", default=None, metavar="DIR", help="the cache directory (default: see above)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return guarded(_run, args, "paddlemix-psa cache")


def _run(args: argparse.Namespace) -> int:
    from ..app.download import cache_entries, clear_cache, default_cache_dir

    cache = Path(args.dir).expanduser() if args.dir else default_cache_dir()
    if cache.exists() and not cache.is_dir():
        raise CliError(f"--dir {cache}: not a directory", exit_codes.CONFIG)
    if args.clear:
        sizes = {p: _size(p) for group in cache_entries(cache) for p in group}
        removed, kept = clear_cache(cache)
        freed = sum(sizes.get(p, 0) for p in removed)
        print(f"removed {_files(len(removed))} ({_human(freed)}) from {cache}")
        if kept:
            print(f"kept {_files(len(kept))} that a running download is writing")
        return exit_codes.OK
    entries, partials = cache_entries(cache)
    print(f"cache: {cache}")
    for p in entries:
        st = p.stat()
        print(f"  {_human(st.st_size):>10}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(st.st_mtime))}  {p.name}")
    print(f"{_files(len(entries))}, {_human(sum(_size(p) for p in entries))}")
    if partials:
        print(f"partial downloads (running or interrupted): {_files(len(partials))}, "
              f"{_human(sum(_size(p) for p in partials))}")
    return exit_codes.OK


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:          # removed meanwhile
        return 0


def _files(n: int) -> str:
    return f"{n} file" + ("" if n == 1 else "s")


def _human(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"
