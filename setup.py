from setuptools import find_packages, setup

setup(
    name="tf_maml",
    version="0.1.0",
    description="Model-Agnostic Meta-Learning (Finn et al. 2017) on TensorFlow 2 / Keras 3, "
    "faithful to the original cbfinn/maml",
    packages=find_packages(include=["tf_maml", "tf_maml.*", "data_prep"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow==2.21.*",
        "keras>=3.10",
        "absl-py",
        "numpy",
        "matplotlib",
        "pillow",
        "tensorflow-datasets",
        "tensorboard",
    ],
    # gym: only so that tf_maml.tasks.navigation.NavigationEnv is a gymnasium.Env with Box
    # spaces (for Gymnasium's tools); nothing else needs it (docs/rl.md).
    # rl: the MuJoCo locomotion tasks (tf_maml/tasks/locomotion.py): MuJoCo 4's batched
    # stepping (mujoco.batch) and Gymnasium's half_cheetah.xml and ant.xml.
    # ruff within one minor version: a later one may add rules to the selected sets, and a
    # lint rule should change in a commit here, not break CI on the day it is released.
    extras_require={"test": ["pytest", "hypothesis", "ruff>=0.17,<0.18"], "gym": ["gymnasium>=1.0"],
                    "rl": ["mujoco>=4.0.1", "gymnasium>=1.0"]},
    entry_points={
        "console_scripts": [
            "tf-maml=tf_maml.main:run",
            "tf-maml-figures=tf_maml.figures:run",
            "tf-maml-reproduce=tf_maml.reproduce:run",
            "tf-maml-prep-omniglot=data_prep.omniglot:main",
            "tf-maml-prep-miniimagenet=data_prep.miniimagenet:main",
        ]
    },
)
