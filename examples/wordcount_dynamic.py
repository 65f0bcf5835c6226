"""Word count of a directory, with the fan-out decided at run time (``ctx.replace``).

The user gives only a directory::

    python examples/wordcount_dynamic.py ~/src/project
    python examples/wordcount_dynamic.py --limit 50          # this Python's stdlib, 50 files

The workflow enqueued is just two steps::

    chain(list_files.s(directory, limit), merge_totals.s())

``list_files`` runs on a worker, lists the ``.py`` files, and replaces itself with a group
of one ``count_words`` job per file (``ctx.replace(group(...))``). The group joins the
same workflow in the transaction that completes ``list_files``, and ``merge_totals``
waits for the group instead and receives the list of per-file counts, in file order.

It reuses ``count_words`` and the App of ``wordcount_flow.py``; ``pgqueue worker --app
examples.wordcount_dynamic`` runs its jobs in other processes.
"""

from __future__ import annotations

import argparse
import collections
import sys
import sysconfig
import threading
from pathlib import Path

import pgqueue
from examples.wordcount_flow import TOP, app, count_words, find_files

__all__ = ["app", "list_files", "main", "merge_totals"]


@app.task(name="examples.wordcount_dynamic.list_files", pass_context=True, max_attempts=3)
def list_files(ctx: pgqueue.JobContext, directory: str, limit: int | None = None) -> None:
    """List the files, then replace this step with one ``count_words`` job per file."""
    files = find_files(Path(directory), limit)
    return ctx.replace(pgqueue.group(count_words.s(str(p)) for p in files))


@app.task(name="examples.wordcount_dynamic.merge_totals", max_attempts=3)
def merge_totals(results: list[dict]) -> dict:
    """Merge every file's counts (the replacement's results, in file order)."""
    totals: collections.Counter[str] = collections.Counter()
    for r in results:
        totals.update(r["counts"])
    return {"files": len(results), "words": sum(r["words"] for r in results),
            "distinct_words": len(totals), "top_words": totals.most_common(TOP),
            "first_file": results[0]["path"] if results else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("directory", nargs="?", type=Path,
                        default=Path(sysconfig.get_paths()["stdlib"]))
    parser.add_argument("--limit", type=int, default=None, metavar="N")
    parser.add_argument("--concurrency", type=int, default=8, metavar="N")
    opts = parser.parse_args(argv)
    root = opts.directory.expanduser().resolve()
    if not root.is_dir():
        parser.error(f"{root} is not a directory")
    app.migrate()
    handle = pgqueue.chain(list_files.s(str(root), opts.limit),
                           merge_totals.s()).enqueue(name=f"wordcount {root}")
    print(f"workflow {handle.id}: list {root}, then one job per file, then merge", flush=True)
    worker = pgqueue.Worker(app, concurrency=opts.concurrency, shutdown_grace=10.0)
    box: dict[str, object] = {}

    def wait() -> None:
        try:
            box["totals"] = handle.result(timeout=600)
        except Exception as e:  # noqa: BLE001 - reported below
            box["error"] = e
        worker.stop()

    threading.Thread(target=wait, name="wordcount-wait", daemon=True).start()
    worker.run()
    app.close()
    if "error" in box:
        print(f"workflow {handle.id} did not complete: {box['error']}", file=sys.stderr)
        return 1
    totals = box["totals"]
    assert isinstance(totals, dict)
    print(f"{totals['files']} files, {totals['words']} words, "
          f"{totals['distinct_words']} distinct")
    for w, n in totals["top_words"][:10]:
        print(f"  {w:<20} {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
