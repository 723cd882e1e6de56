"""docs/RESULTS.md and its figures, written from the model zoo alone.

Everything in the report comes from committed files (``zoo/<run>/``: ``results.json``,
``training_log.csv``, the evaluations' ``.npy``), never from the machine that writes it, so
that a fresh clone regenerates the same file byte for byte. Speeds and the machines they were
measured on are those recorded in the zoo by the machine that trained.
"""

from __future__ import annotations

import os

import numpy as np

from tf_maml import atomic, training_log
from tf_maml import zoo as zoo_lib

HEADER = """# Results: the paper's numbers beside ours

<!-- written by tf-maml-reproduce from the files in zoo/; rerun it rather than editing -->

Every number below was obtained by this code, and every trained model behind it is in the
repository's `zoo/` folder (one folder per training run, with its configuration, training
log and evaluations): `tf-maml-reproduce --train=False --evaluate=False` rewrites this file
from those files alone. Training used the flagfile in `flags/` (resumed across machines when
it outlasted one); evaluation restored the checkpoint of the iteration given and ran 600 test
tasks with `--train=False` (seeded task streams: the same test tasks for every checkpoint).
Image accuracies are the last column of the original's CSV (10 gradient steps at test; the
fine-tuning baseline's steps are chosen on validation tasks, the nearest-neighbour baseline
takes none), mean ± 1.96·std/√n over the tasks; sinusoid numbers are query MSE, mean ± the
same half-width.
A row meets the paper when our 95% interval overlaps the paper's. Training time is summed
over the sessions of the run's `training_log.csv` with pauses left out: an interval between
two logged iterations more than {pause:g} times slower per iteration than its session's median
(the process stopped, or the machine suspended or busy with other work) counts at that
median. A **partial** row evaluates a run stopped before the paper's iteration count; the
zoo holds the checkpoint it evaluated and its latest state, and the same command resumes it
(the hours left are at the fastest speed, pauses left out, of its stretches of at least
{planning:,} iterations on the machine named, the one that trained it last, else at its last
session's: a stretch that shared the machine with other work ran slower;
its validation value is the mean of its last validations, each one meta-batch of validation
tasks, as the original validates). Each run's stretches of training, with their speeds and
processors, are under Machines.

Re-evaluate a zoo model (`$DATA/omniglot`, `$DATA/miniimagenet`: the folders `data_prep` wrote,
the README's `data/omniglot_resized` and `data/miniimagenet`; `$LOGDIR`: any scratch folder):

```bash
tf-maml-reproduce --experiments=omniglot5_1shot --omniglot_dir=$DATA/omniglot \\
    --logdir_root=$LOGDIR --train=False --reevaluate
```

and export one as a SavedModel with in-graph adaptation:

```bash
tf-maml-reproduce --experiments=omniglot5_1shot --export_dir=$LOGDIR/omniglot5_1shot_savedmodel
```
"""

TABLE_NOTES = {
    "omniglot": "Paper numbers: Finn et al. 2017, Table 1 (the non-conv rows are its \"MAML, "
                "no conv\" row). Rows marked \"1-shot model\" evaluate the model meta-trained "
                "1-shot with K=5 at test, as the original authors' flags did; the others were "
                "meta-trained with the row's K.",
    "miniimagenet": "Paper numbers: Finn et al. 2017, Table 1 (the first-order rows are its "
                    "\"first order approx.\" row).",
}


# The reinforcement-learning tables, one per task family (a row's group).
RETURN_TITLES = {"navigation": "2D navigation", "cheetah_vel": "Half-cheetah, goal velocity",
                 "cheetah_dir": "Half-cheetah, goal direction", "ant_vel": "Ant, goal velocity",
                 "ant_dir": "Ant, goal direction"}
RETURNS_INTRO = (
    "The paper shows these as curves (its Figure 5; 2D navigation: its Figure 4), not numbers; "
    "ours, drawn from the zoo, are under Figures. Each row restored the checkpoint of the "
    "meta-iteration given (the random baseline: the untrained policy, seeded) and adapted it "
    "on its family's test tasks (fixed: the same for every row and checkpoint) with 0 to 3 "
    "policy-gradient steps, each on the samples its flagfile names per task (locomotion: "
    "whole paths until 20 × 200 environment steps); a number is the mean over the test tasks "
    "of a task's average return, ± 1.96·std/√n. A **partial** row evaluates a run stopped "
    "before its meta-iteration count (\"120 of 1000\"); the same command resumes it from the "
    "zoo. The oracle sees the task and needs no adaptation (the paper draws it at 0 steps).")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


# ---------------------------------------------------------------------------- training logs
def validation_curve(rows: list[dict]):
    """(iterations, validation post-update accuracy, train iterations, train post accuracy)."""
    val_it, val, tr_it, tr = [], [], [], []
    for row in rows:
        try:
            if row.get("phase") == "val" and row.get("val_post"):
                val_it.append(int(row["iteration"]))
                val.append(float(row["val_post"]))
            elif row.get("post"):
                tr_it.append(int(row["iteration"]))
                tr.append(float(row["post"]))
        except ValueError:
            continue
    return np.array(val_it), np.array(val), np.array(tr_it), np.array(tr)


# The original validates on one meta-batch every 500 iterations (4 tasks on MiniImageNet:
# single values scatter by ±5 points), so a partial row gives the mean of the last few.
RECENT_VALIDATIONS = 10


def recent_validation(rows: list[dict]) -> tuple[float, int, int, int] | None:
    """The mean validation post-update value of the last :data:`RECENT_VALIDATIONS`
    validations (a zoo folder's log ends at its checkpoint, so these are of the committed
    state), with how many they are and their first and last iteration; None before the
    first."""
    val_it, val, _, _ = validation_curve(rows)
    if not len(val):
        return None
    k = min(RECENT_VALIDATIONS, len(val))
    return float(np.mean(val[-k:])), k, int(val_it[-k]), int(val_it[-1])


# ---------------------------------------------------------------------------- rows
def collect(experiment, zoo_dir: str, target: int, num_test_tasks: int) -> dict:
    """What the report needs of one row, read from its zoo folder."""
    record = zoo_lib.results(zoo_dir)
    log = training_log.read_training_log(zoo_dir)
    committed = zoo_lib.latest_iteration(zoo_dir)
    run = record.get("run") or {}
    return {"experiment": experiment, "zoo_dir": zoo_dir, "target": target,
            "tasks": num_test_tasks, "run": run,
            "state": next((v for k, v in record.items()
                           if k.endswith("|" + experiment.name)), None),
            "committed": committed, "wall": training_log.training_seconds(log),
            "speed": training_log.last_speed(log), "validation": recent_validation(log),
            "stretches": training_log.run_stretches(log, committed, run)}


def intervals_overlap(mean: float, ci: float, paper: tuple[float, float]) -> bool:
    return abs(mean - paper[0]) <= ci + paper[1]


def status(row: dict) -> str:
    """complete | trained, not evaluated yet | partial (with the state committed, the recent
    validation and the hours left) | not run."""
    e, state = row["experiment"], row["state"]
    if e.train_flags is None:
        return "complete" if state else "not run"
    committed, target = row["committed"], row["target"]
    if not state and not committed:
        return "not run"
    evaluated = state["iteration"] if state else 0
    if evaluated >= target:
        return "complete"
    if committed >= target and not state:  # e.g. a baseline whose shared pretraining is done
        return f"trained ({committed} committed), not evaluated yet"
    text = "**partial**"
    if committed > evaluated:
        text += f"; state at {committed} committed"
    if row["validation"] and committed < target:
        value, k, first, last = row["validation"]
        shown = (f"validation MSE after adaptation {value:.3f}" if e.group == "sinusoid"
                 else f"validation accuracy after adaptation {100 * value:.1f}%")
        text += (f"; {shown} (at {last})" if k == 1 else
                 f"; {shown} (mean of the {k} validations at {first}-{last})")
    speed, machine = planning_speed(row)
    if speed and committed < target:
        machine = "processor not recorded" if machine == training_log.NOT_RECORDED else machine
        text += (f"; {duration((target - committed) / speed)} left at "
                 f"{speed:.2f} it/s" + (f" ({machine})" if machine else ""))
    return text


# A stretch shorter than this tells its speed too roughly to plan the rest of a run by.
PLANNING_MIN_ITERATIONS = 1000


def planning_speed(row: dict) -> tuple[float | None, str]:
    """The speed a partial row's hours left are reckoned at, and its machine: the fastest
    stretch of at least :data:`PLANNING_MIN_ITERATIONS` on the processor that trained it
    last, else its last session's speed. A stretch that shared the machine with other work
    (tests, a second job) ran slower than the processor runs the job alone: the last
    session's speed alone said twice the hours a Zen 4 needed after one such stretch."""
    stretches = row.get("stretches") or []
    machine = training_log.machine_text(stretches[-1]) if stretches else ""
    alike = [s["iterations_per_second"] for s in stretches
             if s.get("iterations_per_second") and machine != training_log.NOT_RECORDED
             and training_log.machine_text(s) == machine
             and s["last"] - s["first"] >= PLANNING_MIN_ITERATIONS]
    return (max(alike) if alike else row["speed"]), machine


def _accuracy_cells(row: dict) -> list[str]:
    e, st = row["experiment"], row["state"]
    paper = f"{e.paper[0]:.2f} ± {e.paper[1]:.2f}" if e.paper else ""
    if not st:
        return [paper, "", "", "", ""]
    m, c = 100 * np.array(st["means"]), 100 * np.array(st["ci95"])
    ours = f"{m[-1]:.2f} ± {c[-1]:.2f}"
    diff = met = ""
    if e.paper:
        diff = f"{m[-1] - e.paper[0]:+.2f}"
        met = "yes" if intervals_overlap(m[-1], c[-1], e.paper) else "no"
    it = str(st["iteration"]) if e.train_flags else "(original's 59000)"
    return [paper, ours, diff, met, it]


def seed_summaries(rows: list[dict]) -> list[str]:
    """Mean ± std across seeds of each row that has other seeds (complete runs only)."""
    lines = []
    for row in rows:
        e = row["experiment"]
        group = [row] + [r for r in rows if r["experiment"].seeds_of == e.name]
        if e.seeds_of or len(group) < 2:
            continue
        done = [r for r in group if r["state"] and status(r) == "complete"]
        if len(done) < 2:
            lines.append(f"- {e.label}: {len(done)} of {len(group)} seeds complete.")
            continue
        finals = np.array([100 * r["state"]["means"][-1] for r in done])
        lines.append(f"- {e.label}, across {len(done)} seeds: {finals.mean():.2f} ± "
                     f"{finals.std(ddof=1):.2f} (mean ± std of the seeds' accuracies; each "
                     "seed's 600-task interval is in its row).")
    return lines


# ---------------------------------------------------------------------------- the file
def render(rows: list[dict], figures: list[str], output: str) -> str:
    lines = [HEADER.replace("{pause:g}", f"{training_log.PAUSE_FACTOR:g}").replace(
        "{planning:,}", f"{PLANNING_MIN_ITERATIONS:,}")]
    by_group: dict[str, list[dict]] = {}
    for row in rows:
        by_group.setdefault(row["experiment"].group, []).append(row)
    if "sinusoid" in by_group:
        lines += sinusoid_section(by_group["sinusoid"])
    for group in ("omniglot", "miniimagenet"):
        if group in by_group:
            lines += accuracy_section(group, by_group[group])
    rl_groups = [g for g, group_rows in by_group.items()
                 if group_rows[0]["experiment"].kind == "return"]
    if rl_groups:
        lines += ["## Reinforcement learning (average return)", "", RETURNS_INTRO, ""]
        for group in rl_groups:
            lines += returns_section(group, by_group[group])
    lines += machines_section(rows)
    if figures:
        lines += ["## Figures", ""]
        base = os.path.dirname(os.path.abspath(output))
        lines += [f"![{os.path.basename(f)}]({os.path.relpath(os.path.abspath(f), base)})"
                  for f in figures]
        lines.append("")
    commands = [command for group in ("sinusoid", "omniglot", "miniimagenet", *rl_groups)
                for row in by_group.get(group, []) for command in _commands(row)]
    if commands:
        lines += ["## Commands", "", "```bash", "\n\n".join(commands), "```", ""]
    return "\n".join(lines)


def _commands(row: dict) -> list[str]:
    """The commands that made the row's number, as the Commands section shows them."""
    st = row["state"]
    if st and st.get("train_command"):
        return [f"# {row['experiment'].name}: train, then evaluate\n"
                f"{st['train_command']}\n{st['eval_command']}"]
    if st:
        return [f"# {row['experiment'].name}: evaluate\n{st['eval_command']}"]
    return []


def sinusoid_section(sine: list[dict]) -> list[str]:
    """The sinusoid table (query MSE after 0, 1 and 10 steps) and MAML against the
    pretrained baseline."""
    lines = ["## Sinusoid regression (query MSE)", "",
             "The paper shows these as curves (its Figures 2 and 3), not numbers; our "
             "analogues are under Figures.", "",
             "| run | iterations | training time | test tasks | 0 steps | 1 step | 10 steps "
             "| status |", "|---|---|---|---|---|---|---|---|"]
    for row in sine:
        st = row["state"]
        if st:
            m, c = np.array(st["means"]), np.array(st["ci95"])
            vals = [f"{m[i]:.3f} ± {c[i]:.3f}" if np.isfinite(m[i]) else
                    "diverged (non-finite)" for i in (0, 1, -1)]
            it = st["iteration"]
        else:
            vals, it = ["", "", ""], row["committed"] or ""
        lines.append(f"| {row['experiment'].label} | {it} | {duration(row['wall'])} "
                     f"| {row['tasks']} | {' | '.join(vals)} | {status(row)} |")
    pivot = {r["experiment"].name: r["state"] for r in sine if r["state"]}
    ks = [k for k in (5, 10, 20) if f"sinusoid_maml_k{k}" in pivot
          and f"sinusoid_pretrained_k{k}" in pivot]
    if ks:
        lines += ["", "MAML against the pretrained baseline (MSE after 1 and 10 steps; "
                  "lower is better):", "",
                  "| K | MAML, 1 step | pretrained, 1 step | MAML, 10 steps "
                  "| pretrained, 10 steps |", "|---|---|---|---|---|"]
        for k in ks:
            ma, pr = pivot[f"sinusoid_maml_k{k}"], pivot[f"sinusoid_pretrained_k{k}"]
            lines.append(f"| {k} | {ma['means'][1]:.3f} | {pr['means'][1]:.3f} | "
                         f"{ma['means'][-1]:.3f} | {pr['means'][-1]:.3f} |")
    lines.append("")
    return lines


def accuracy_section(group: str, group_rows: list[dict]) -> list[str]:
    """The accuracy table of ``group`` (omniglot or miniimagenet) against the paper's, its
    notes, the seeds' summaries and the table's own notes."""
    titles = {"omniglot": "Omniglot (accuracy %)", "miniimagenet": "MiniImageNet (accuracy %)"}
    lines = [f"## {titles[group]}", "",
             "| experiment | paper | ours | ours − paper | intervals overlap "
             "| iteration evaluated | training time | status |",
             "|---|---|---|---|---|---|---|---|"]
    notes: list[str] = []
    for row in group_rows:
        e = row["experiment"]
        cells = _accuracy_cells(row)
        label = e.label
        if e.note:
            if e.note not in notes:
                notes.append(e.note)
            label += f" [{notes.index(e.note) + 1}]"
        lines.append(f"| {label} | {' | '.join(cells)} | {duration(row['wall'])} | "
                     f"{status(row)} |")
    lines.append("")
    lines += [f"[{i}] {note}." for i, note in enumerate(notes, 1)]
    lines += [""] if notes else []
    lines += seed_summaries(group_rows)
    lines += ["", TABLE_NOTES[group], ""]
    return lines


def returns_section(group: str, group_rows: list[dict]) -> list[str]:
    """The table of the task family ``group``: each row's average return after 0, 1, ...
    test steps, with the meta-iteration evaluated of the row's count."""
    steps = max((len(r["state"]["means"]) for r in group_rows if r["state"]), default=4)
    heads = ["0 steps", "1 step"] + [f"{k} steps" for k in range(2, steps)]
    lines = [f"### {RETURN_TITLES.get(group, group)}", "",
             f"| run | iterations | training time | test tasks | {' | '.join(heads)} "
             "| status |", "|" + "---|" * (5 + len(heads))]
    for row in group_rows:
        e, st = row["experiment"], row["state"]
        vals = [""] * steps
        if st:
            m, c = np.array(st["means"]), np.array(st["ci95"])
            vals = [f"{m[i]:.2f} ± {c[i]:.2f}" if np.isfinite(m[i]) else
                    "diverged (non-finite)" for i in range(len(m))]
            vals += [""] * (steps - len(vals))
        if e.train_flags is None:
            it = "untrained" if st else ""
        else:
            done = st["iteration"] if st else row["committed"]
            it = f"{done} of {row['target']}" if st or done else ""
        lines.append(f"| {e.label} | {it} | {duration(row['wall'])} | "
                     f"{row['tasks'] if st else ''} | {' | '.join(vals)} | {status(row)} |")
    lines.append("")
    return lines


def machines_section(rows: list[dict]) -> list[str]:
    """Every stretch of training of every run (a zoo folder once), and the machines that
    evaluated."""
    lines, seen = [], set()
    for row in rows:
        if row["zoo_dir"] in seen or not row.get("stretches"):
            continue
        seen.add(row["zoo_dir"])
        for s in row["stretches"]:
            speed = s["iterations_per_second"]
            speed = "" if speed is None else f"{speed:.0f}" if speed >= 100 else f"{speed:.2f}"
            lines.append(f"| {os.path.basename(row['zoo_dir'])} | {s['first']}-{s['last']} | "
                         f"{speed} | {s['processor'] or 'not recorded'} | {s['isa'] or ''} | "
                         f"{s['cores'] or ''} |")
    evaluated = sorted({r["state"]["machine"] for r in rows
                        if r["state"] and r["state"].get("machine")})
    if not lines and not evaluated:
        return []
    out = ["## Machines", ""]
    if lines:
        out += ["Training ran in stretches, each the consecutive training between two "
                "restarts: from the previous stretch's last logged iteration to its own (the "
                "last one to the latest checkpoint), its iterations per second with pauses "
                "left out, and its processor (\"not recorded\" where the zoo did not record "
                "it):", "",
                "| zoo folder | iterations | it/s | processor | vector ISA | cores |",
                "|---|---|---|---|---|---|"] + lines + [""]
    if evaluated:
        out += ["Evaluation ran on:", ""] + [f"- {m}" for m in evaluated] + [""]
    return out


MARK = "<!-- written by tf-maml-reproduce"  # the line of HEADER that tells a report


def is_replaceable(path: str) -> bool:
    """Whether the file at ``path`` may be replaced by a report: a report (it has
    :data:`MARK` near its top), or empty; not another file the output flag named by mistake."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            top = f.read(2000)
    except OSError:
        return True  # not there, or unreadable: the write says why
    return not top or MARK in top


def write(rows: list[dict], output: str, figures: list[str]) -> str:
    """Writes the results file atomically; returns its path."""
    text = render(rows, figures, output)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    atomic.write(output, text)
    return output


# ---------------------------------------------------------------------------- figures
def training_curve(row: dict, path: str) -> str | None:
    """Validation accuracy (one meta-batch every 500 iterations) against iteration."""
    val_it, val, tr_it, tr = validation_curve(training_log.read_training_log(row["zoo_dir"]))
    if len(val_it) == 0 and len(tr_it) == 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    if len(tr_it):
        order = np.argsort(tr_it, kind="stable")
        ax.plot(tr_it[order], 100 * tr[order], lw=0.8, alpha=0.5, label="training batch, post")
    if len(val_it):
        order = np.argsort(val_it, kind="stable")
        k = 5  # running mean over 5 validation batches: single batches are noisy
        v = val[order]
        smooth = np.convolve(v, np.ones(k) / k, mode="valid") if len(v) >= k else v
        ax.plot(val_it[order], 100 * v, ".", ms=3, alpha=0.5, label="validation batch, post")
        ax.plot(val_it[order][len(v) - len(smooth):], 100 * smooth, "-",
                label=f"validation, mean of {k}")
    e = row["experiment"]
    if e.paper and e.name.endswith("1shot"):
        ax.axhline(e.paper[0], color="k", ls=":", lw=1, label=f"paper test {e.paper[0]}%")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("accuracy % after adaptation")
    ax.set_title(f"{e.group} {e.label}", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_ylim(max(0, ax.get_ylim()[0]), 100.5)
    fig.tight_layout()
    with atomic.replacing(path) as f:  # a kill mid-write leaves the old figure whole
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path


def figure_paths(rows: list[dict], figures_dir: str) -> list[str]:
    """The figures the report shows, whether or not they are drawn now: a training curve per
    image run with a training log, the sinusoid figures when their runs are evaluated and
    Figure 5 of each reinforcement-learning family with two rows evaluated (so that the
    report's text does not depend on drawing them)."""
    out, seen = [], set()
    for row in rows:
        e = row["experiment"]
        if (e.kind != "accuracy" or e.train_flags is None or row["zoo_dir"] in seen
                or not training_log.read_training_log(row["zoo_dir"])):
            continue
        seen.add(row["zoo_dir"])
        out.append(os.path.join(figures_dir, f"curve_{e.name}.png"))
    sine = {r["experiment"].name for r in rows if r["state"]}
    if {"sinusoid_maml_k10", "sinusoid_pretrained_k10"} <= sine:
        out += [os.path.join(figures_dir, "sinusoid_figure2.png"),
                os.path.join(figures_dir, "sinusoid_figure3.png")]
    out += [os.path.join(figures_dir, f"figure5_{group}.png")
            for group in _return_curves(rows)]
    out += [os.path.join(figures_dir, f"training_{group}.png")
            for group in _trained_families(rows)]
    return out


def _trained_families(rows: list[dict]) -> dict[str, list[dict]]:
    """The reinforcement-learning families with a meta-training curve to draw: their rows
    whose zoo folder holds a training log (the random baseline trains nothing)."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        e = row["experiment"]
        if (e.kind == "return" and e.train_flags is not None and row["state"]
                and training_log.read_training_log(row["zoo_dir"])):
            out.setdefault(e.group, []).append(row)
    return out


def training_returns_curve(group_rows: list[dict], path: str) -> str | None:
    """The meta-training curves of one reinforcement-learning family, from the zoo: each
    trained row's average return per meta-iteration (MAML's before and after its step)."""
    from tf_maml.rl import figure as rl_figure

    group = group_rows[0]["experiment"].group
    title = RETURN_TITLES.get(group, group)
    runs = {row["experiment"].label: row["zoo_dir"] for row in group_rows}
    return rl_figure.plot_training(runs, path, title=f"{title}, meta-training (zoo/)")


def _return_curves(rows: list[dict]) -> dict[str, list[dict]]:
    """The reinforcement-learning families whose Figure 5 curve is drawn: those with two
    rows evaluated or more (MAML against a baseline), with those rows."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        if row["experiment"].kind == "return" and row["state"]:
            out.setdefault(row["experiment"].group, []).append(row)
    return {group: evaluated for group, evaluated in out.items() if len(evaluated) >= 2}


def return_curve(group_rows: list[dict], path: str) -> str:
    """Figure 5 of one task family, from the zoo: each evaluated row's average return
    against the number of test steps (a partial row labelled with its meta-iterations), the
    oracle (a row named ``*_oracle``) as a band at its 0-step return."""
    from tf_maml.rl import figure as rl_figure

    runs, oracle = {}, None
    for row in group_rows:
        e, st = row["experiment"], row["state"]
        if e.name.endswith("_oracle"):
            oracle = row["zoo_dir"]
            continue
        partial = e.train_flags is not None and st["iteration"] < row["target"]
        label = e.label + (f" ({st['iteration']} of {row['target']} it.)" if partial else "")
        runs[label] = row["zoo_dir"]
    group = group_rows[0]["experiment"].group
    title = RETURN_TITLES.get(group, group)
    return rl_figure.plot(runs, path, oracle,
                          title=f"{title[:1].lower() + title[1:]}, meta-test (zoo/)")


def draw_figures(rows: list[dict], figures_dir: str, log=print) -> None:
    os.makedirs(figures_dir, exist_ok=True)
    by_name = {r["experiment"].name: r for r in rows}
    for path in figure_paths(rows, figures_dir):
        name = os.path.basename(path)[:-4]
        if name.startswith("curve_"):
            training_curve(by_name[name[len("curve_"):]], path)
    _draw_return_curves(rows, figures_dir, log)
    for group, trained in _trained_families(rows).items():
        try:
            training_returns_curve(trained, os.path.join(figures_dir, f"training_{group}.png"))
        except Exception as err:  # a figure must never lose the table
            log(f"{group} training figure failed: {err}")
    sine = {n: r for n, r in by_name.items() if r["state"] and r["experiment"].group ==
            "sinusoid"}
    if not {"sinusoid_maml_k10", "sinusoid_pretrained_k10"} <= set(sine):
        return
    _draw_sinusoid(sine, figures_dir, log)


def _draw_return_curves(rows: list[dict], figures_dir: str, log) -> None:
    for group, evaluated in _return_curves(rows).items():
        try:
            return_curve(evaluated, os.path.join(figures_dir, f"figure5_{group}.png"))
        except Exception as err:  # a figure must never lose the table
            log(f"{group} figure failed: {err}")


def _draw_sinusoid(sine: dict, figures_dir: str, log) -> None:
    from tf_maml import figures

    runs = {"MAML": sine["sinusoid_maml_k10"]["zoo_dir"],
            "pretrained": sine["sinusoid_pretrained_k10"]["zoo_dir"]}
    try:
        figures.figure2(runs, os.path.join(figures_dir, "sinusoid_figure2.png"))
        curves = {"MAML K=10": runs["MAML"], "pretrained K=10": runs["pretrained"]}
        for k in (5, 20):
            for kind, label in (("maml", "MAML"), ("pretrained", "pretrained")):
                if f"sinusoid_{kind}_k{k}" in sine:
                    curves[f"{label} K={k}"] = sine[f"sinusoid_{kind}_k{k}"]["zoo_dir"]
        figures.figure3(curves, os.path.join(figures_dir, "sinusoid_figure3.png"))
    except Exception as err:  # a figure must never lose the table
        log(f"sinusoid figures failed: {err}")
