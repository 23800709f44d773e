"""Published HCLT test log-likelihoods on DEBD, recomputed from the authors' released logs.

Source: Liu & Van den Broeck, *Tractable Regularization of Probabilistic Circuits*
(NeurIPS 2021), repository ``UCLA-StarAI/Tractable-PC-Regularization``, folder
``non-deterministic PCs/logs_12_4_0.1_0.002_0.001_{1..5}/``: one folder per seed, one
file per dataset, one line per EM epoch holding ``train valid test`` average
log-likelihoods in nats per sample. The folder name carries the hyper-parameters of
``main.jl``: 12 latent categories, a mixture of 4 HCLTs, pseudocount 0.1, data
softening 0.002, entropy regularisation 0.001.

The repository's table comes from ``display_results.jl``, which per folder reads
``split(raw, '\\n')[end-1]`` (the last line, as every log ends with a newline) and takes
its third space-separated field. It then loops over the lines meaning to pick the epoch
of best validation log-likelihood, but parses ``final_results`` (the last line) in that
loop instead of ``line``, so every entry equals the last line and ``argmax`` returns it:
the reported figure is the test value of the last line. Per dataset it prints
``mean`` and ``std`` (Julia's ``Statistics.std``: the corrected, ``n - 1``, estimator)
over the five seeds. :func:`recompute` does exactly that; it also records, clearly
labelled and used nowhere else, the test value at the epoch of best validation
log-likelihood that the loop appears to have meant.

Run::

    python benchmarks/published_debd.py LOG_ROOT --commit HASH

where ``LOG_ROOT`` is a checkout of the repository (or a folder holding the
``logs_*`` folders). Writes ``benchmarks/results/published_debd.json``;
``bench_circuits.py`` merges it into ``circuits.json`` (:func:`merge_published`) and
``docs/circuits.md`` quotes :func:`debd_table_markdown` of that file.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
import statistics

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "published_debd.json"
CIRCUITS_JSON = REPO / "benchmarks" / "results" / "circuits.json"

SOURCE_REPO = "UCLA-StarAI/Tractable-PC-Regularization"
LOG_SUBFOLDER = "non-deterministic PCs"
FOLDER_PREFIX = "logs_12_4_0.1_0.002_0.001"
SEEDS = (1, 2, 3, 4, 5)
CITATION = ("HCLT, Liu & Van den Broeck, Tractable Regularization of Probabilistic Circuits, "
            "NeurIPS 2021, mean of the authors' five released runs")
METHOD = (
    "As display_results.jl at this commit: per seed folder and dataset file, the third "
    "space-separated field (test LL, nats per sample) of the last line "
    "(split(raw, '\\n')[end-1]; every file ends with a newline); its best-validation loop "
    "parses the last line on every iteration, so argmax returns the last line. Mean and "
    "Statistics.std (corrected, n - 1) over the five seeds.")


def _final_and_best_valid(path: pathlib.Path) -> tuple[float, float]:
    """(test LL of the last line, test LL of the best-validation line) of one log file."""
    raw = path.read_text()
    if not raw.endswith("\n"):
        # display_results.jl's [end-1] would then read the second-to-last line.
        raise ValueError(f"log file {path} does not end with a newline; display_results.jl "
                         f"would read its second-to-last line, so refusing to guess")
    lines = raw.split("\n")[:-1]
    rows = []
    for number, line in enumerate(lines, 1):
        fields = line.split(" ")
        if len(fields) < 3:
            raise ValueError(f"{path}, line {number}: expected 'train valid test', got {line!r}")
        rows.append((float(fields[1]), float(fields[2])))
    if not rows:
        raise ValueError(f"log file {path} has no lines")
    best = max(range(len(rows)), key=lambda i: rows[i][0])  # first maximum, as Julia's argmax
    return rows[-1][1], rows[best][1]


def _log_folder(log_root: pathlib.Path) -> pathlib.Path:
    """The folder holding the ``logs_*`` folders: ``LOG_ROOT/non-deterministic PCs`` or LOG_ROOT."""
    nested = log_root / LOG_SUBFOLDER
    return nested if nested.is_dir() else log_root


def recompute(log_root: str | pathlib.Path, folder_prefix: str = FOLDER_PREFIX,
              seeds: tuple[int, ...] = SEEDS) -> dict[str, dict]:
    """Per dataset: mean and sd over seeds of the final test log-likelihood (nats per sample).

    ``{name: {"mean", "sd", "n_seeds", "per_seed", "mean_test_at_best_valid_epoch"}}``;
    ``sd`` is the ``n - 1`` estimator, as Julia's ``std``. Every seed folder must hold the
    same datasets (display_results.jl pairs them by position in the sorted listing).
    """
    base = _log_folder(pathlib.Path(log_root))
    folders = [base / f"{folder_prefix}_{seed}" for seed in seeds]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise FileNotFoundError(f"log_root={str(log_root)!r}: expected the seed folders "
                                f"{folder_prefix}_{{{','.join(map(str, seeds))}}}, missing {missing}")
    listings = [sorted(p.name for p in f.iterdir() if not p.name.startswith(".")) for f in folders]
    if any(names != listings[0] for names in listings):
        raise ValueError(f"seed folders under {base} hold different files: "
                         f"{dict(zip((f.name for f in folders), listings, strict=True))}")
    results = {}
    for file_name in listings[0]:
        finals, at_best = zip(*(_final_and_best_valid(f / file_name) for f in folders), strict=True)
        results[file_name.split(".")[0]] = {
            "mean": statistics.fmean(finals),
            "sd": statistics.stdev(finals) if len(finals) > 1 else math.nan,
            "n_seeds": len(finals),
            "per_seed": list(finals),
            "mean_test_at_best_valid_epoch": statistics.fmean(at_best),
        }
    return results


def published_record(log_root: str | pathlib.Path, commit: str) -> dict:
    """The content of ``published_debd.json``: provenance, method and per-dataset figures."""
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise ValueError(f"commit: expected a 40-hex-digit git commit hash, got {commit!r}")
    return {
        "source_repo": SOURCE_REPO,
        "commit": commit,
        "folder": f"{LOG_SUBFOLDER}/{FOLDER_PREFIX}_{{{','.join(map(str, SEEDS))}}}/",
        "hyperparameters": "from the folder name and main.jl: 12 latent categories, mixture of "
                           "4 HCLTs, pseudocount 0.1, data softening 0.002, entropy "
                           "regularisation 0.001; 100 mini-batch then 100 full-batch EM "
                           "epochs with early stopping",
        "method": METHOD,
        "units": "test log-likelihood, nats per sample",
        "citation": CITATION,
        "note": "mean_test_at_best_valid_epoch is what display_results.jl's loop appears to "
                "intend; it is recorded for reference only and is not the published figure",
        "datasets": recompute(log_root),
    }


# ------------------------------------------------------ circuits.json merging
def merge_published(report: dict, published: dict) -> dict:
    """Put the published figures into a ``circuits.json`` report, beside ours, with the gap.

    Sets ``report["published_figures"]`` (provenance and all datasets) and, for every
    dataset of ``report["density_estimation"]``, ``"published"``: ``{"hclt_mean", "hclt_sd",
    "n_seeds", "gap_ours_minus_published"}`` (positive: ours is higher), or ``None`` where
    the logs have no such dataset. Other keys (cirkit's figures included) are kept.
    """
    figures = published["datasets"]
    report["published_figures"] = {
        key: published[key] for key in ("source_repo", "commit", "folder", "hyperparameters",
                                        "method", "units", "citation")
    } | {"figures": {name: {k: row[k] for k in ("mean", "sd", "n_seeds")}
                     for name, row in figures.items()}}
    for name, ours in report.get("density_estimation", {}).items():
        row = figures.get(name)
        ours["published"] = None if row is None else {
            "hclt_mean": row["mean"], "hclt_sd": row["sd"], "n_seeds": row["n_seeds"],
            "gap_ours_minus_published": ours["test_log_likelihood"] - row["mean"]}
    return report


def load_published(path: str | pathlib.Path = OUT) -> dict:
    return json.loads(pathlib.Path(path).read_text())


def update_circuits_json(path: str | pathlib.Path = CIRCUITS_JSON,
                         published_path: str | pathlib.Path = OUT) -> dict:
    """Merge ``published_debd.json`` into an existing ``circuits.json`` in place (no training)."""
    path = pathlib.Path(path)
    report = merge_published(json.loads(path.read_text()), load_published(published_path))
    path.write_text(json.dumps(report, indent=2))
    return report


def debd_table_markdown(report: dict) -> str:
    """The DEBD results table of ``docs/circuits.md``, from a ``circuits.json`` report.

    docs/circuits.md quotes this text verbatim (a test checks it against the committed JSON).
    """
    rows = report["density_estimation"]
    lines = ["| dataset | variables | ours | HCLT, published (sd) | ours − HCLT | epochs | time (s) "
             "| parameters |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        published = row.get("published")
        hclt = (f"{published['hclt_mean']:.3f} ({published['hclt_sd']:.3f})"
                if published else "—")
        gap = f"{published['gap_ours_minus_published']:+.3f}" if published else "—"
        lines.append(f"| {name} | {row['num_variables']} | {row['test_log_likelihood']:.3f} | "
                     f"{hclt} | {gap} | {row['epochs']} | {row['seconds']:.0f} | "
                     f"{row['num_parameters']:,} |")
    source = report["published_figures"]
    d = report["setup"]["debd"]
    arguments = ", ".join(f"{k}={v!r}" for k, v in d["fit_debd"].items())
    lines += [
        "",
        f"Test log-likelihood, nats per sample (higher is better). Ours: {d['recipe']}: "
        f"`circuits.fit_debd(train, valid, key=jax.random.key(0), {arguments})`, one run per "
        f"dataset; epochs of both phases, wall-clock seconds (structure learning included) "
        f"and parameter count beside each figure. Published: {source['citation']} (sd over "
        f"the runs, n − 1), recomputed from `{source['folder']}` of {source['source_repo']} at "
        f"commit {source['commit'][:12]} by `benchmarks/published_debd.py`.",
    ]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log_root", help="checkout of the repository, or the folder with logs_*")
    parser.add_argument("--commit", required=True, help="commit the logs were read at")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--no-merge", action="store_true",
                        help="do not merge the figures into benchmarks/results/circuits.json")
    args = parser.parse_args()
    record = published_record(args.log_root, args.commit)
    pathlib.Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    for name, row in record["datasets"].items():
        print(f"{name:11s} {row['mean']:9.3f} ({row['sd']:.3f})  n={row['n_seeds']}")
    print(f"wrote {args.out}")
    if not args.no_merge and CIRCUITS_JSON.exists():
        update_circuits_json(CIRCUITS_JSON, args.out)
        print(f"merged into {CIRCUITS_JSON}")


if __name__ == "__main__":
    main()
