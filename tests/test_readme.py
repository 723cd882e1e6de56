"""The README's own-model example runs as written and adapts; what the README and docs/ name
(files of the repository, links, the command's flags and their defaults) exists as named."""

import glob
import os
import re

import keras
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
DOCS = [README] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))


def readme_example() -> str:
    text = open(README).read()
    section = text.split("## Meta-train your own Keras model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_is_short_and_meta_trains(tmp_path, monkeypatch, capsys):
    code = readme_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 15
    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)  # the example draws its θ; a fixed draw keeps this exact
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "query MSE after 5 steps:" in out
    learner, tasks = namespace["learner"], namespace["tasks"]
    # Independent check: on fresh tasks, 5 adapted steps beat the unadapted initialisation
    # by a wide margin (MAML's promise), measured here, not by the library's evaluation.
    before, after = [], []
    for seed in range(20):
        sx, sy, qx, qy = tasks.sample_batch(1, np.random.default_rng(100 + seed))
        fast = learner.adapt(sx[0], sy[0], num_steps=5)
        before.append(np.mean((learner.predict(qx[0]).numpy() - qy[0]) ** 2))
        after.append(np.mean((learner.predict(qx[0], fast).numpy() - qy[0]) ** 2))
    assert np.mean(after) < 0.5 * np.mean(before)


def test_metalearner_docstring_example_runs(capsys):
    import textwrap

    import tf_maml

    code = textwrap.dedent(tf_maml.MetaLearner.__doc__.split("Example", 1)[1].split("::", 1)[1])
    keras.utils.set_random_seed(0)
    exec(compile(code, "MetaLearner.__doc__", "exec"), {})
    mse = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert mse < 1.0  # 5 adapted steps after 2000 meta-iterations (unadapted: about 3)


def test_files_and_links_the_docs_name_exist():
    """A module moved or a page renamed leaves no stale name in the README or docs/."""
    named = re.compile(r"\b(?:tf_maml|data_prep|benchmarks|tests|flags)/[\w./-]+\."
                       r"(?:py|flags|json|md)")
    link = re.compile(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)")  # relative: no scheme, no anchor alone
    stale = []
    for doc in DOCS:
        text = open(doc).read()
        stale += [f"{doc}: {path}" for path in set(named.findall(text))
                  if not os.path.exists(os.path.join(REPO, path))]
        stale += [f"{doc}: link {target}" for target in set(link.findall(text))
                  if not os.path.exists(os.path.join(os.path.dirname(doc), target))]
    assert not stale, stale


def test_flags_doc_lists_every_flag_with_its_default():
    """docs/flags.md's tables against the flags tf-maml defines: each one, its default."""
    from tf_maml import main

    values = main.flags.FlagValues()
    main.define_flags(values)
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]*) \|", open(
        os.path.join(REPO, "docs", "flags.md")).read(), re.M))
    assert sorted(rows) == sorted(values), set(rows) ^ set(values)
    for name, documented in rows.items():
        default, documented = values[name].default, documented.strip().strip("`")
        if isinstance(default, (bool, str)) or default is None:
            assert documented == str(default), name
        else:  # 1e-5 and 0.00001 are one number
            assert float(documented) == default, name
