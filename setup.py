"""FLIQS: one-shot mixed-precision floating-point and integer quantization search."""
from setuptools import find_packages, setup

TEST_REQUIRES = [
    "pytest>=7",
    "ml_dtypes>=0.4",  # reference oracle for the FP formats
    "onnx>=1.16",
    "onnxruntime>=1.18",
    "onnxscript>=0.1",
]

setup(
    name="fliqs",
    version="0.1.0",
    description="One-shot mixed-precision floating-point and integer quantization search (FLIQS)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["quant*", "cost*", "policy*", "trainer*", "eval*"]),
    py_modules=["eval_parallel"],
    install_requires=[
        # Ranges, not pins: the CPU machines run torch 2.13, the GPU machines torch 2.11 and
        # transformers 5.17; both must install without pulling anything else.
        "torch>=2.11",
        "transformers>=5.17",
        "datasets>=3.0",
        "accelerate>=1.0",
        "numpy>=1.26",
        "evaluate>=0.4",
        "scikit-learn>=1.3",
        "scipy>=1.10",
        "tensorboard>=2.14",
        "safetensors>=0.4",
        "matplotlib>=3.7",
        "pyyaml>=6",
    ],
    extras_require={"test": TEST_REQUIRES, "onnx": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.1"]},
    # The same commands as `python eval_parallel.py`, `python -m eval.eval_run`, `python -m
    # eval.eval_parse` and `python -m quant.export`, for an installed package.
    entry_points={"console_scripts": [
        "fliqs-launch=eval_parallel:cli",
        "fliqs-run=eval.eval_run:main",
        "fliqs-report=eval.eval_parse:main",
        "fliqs-export=quant.export_cli:cli",
    ]},
)
