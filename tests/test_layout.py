"""modelrepo.layout: config.pbtxt parsing and model-folder validation, rule by rule.

Each rule gets a bad layout built in tmp_path on fsspec's LocalFileSystem; the error must name
the file (and the line, where the config tells) and say what to do. Realistic layouts pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem
from google.protobuf import json_format

from modelrepo.errors import LayoutError, LayoutProblem
from modelrepo.layout import (
    ModelConfig,
    TensorSpec,
    VersionPolicy,
    backend_of,
    config_to_json,
    expected_model_file,
    inputs_of,
    outputs_of,
    parse_config,
    render_config,
    validate_model_dir,
    validate_version_files,
    version_policy_of,
    versions_to_load,
    with_specific_version,
)

LAYOUTS = Path(__file__).parent / "layouts"
FS = LocalFileSystem()

ADD_ONE = """\
name: "add_one"
backend: "python"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
instance_group [ { kind: KIND_CPU } ]
"""
IO = """\
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""


def make_model(root: Path, name: str, config: str | None, files: dict[str, str | None]) -> Path:
    """A model folder: ``files`` maps relative paths to text, or None for an (empty) folder."""
    folder = root / name
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.pbtxt").write_text(textwrap.dedent(config))
    for rel, content in files.items():
        target = folder / rel
        if content is None:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
    return folder


def problems_of(folder: Path, **kwargs: object) -> list[LayoutProblem]:
    with pytest.raises(LayoutError) as caught:
        validate_model_dir(FS, str(folder), **kwargs)  # type: ignore[arg-type]
    problems = caught.value.problems
    for problem in problems:  # every problem says where and what to do
        assert problem.path.startswith(str(folder)) and problem.fix
    return problems


def only(problems: list[LayoutProblem], words: str) -> LayoutProblem:
    matching = [p for p in problems if words in p.message]
    assert len(matching) == 1, problems
    return matching[0]


def python_model(tmp_path: Path, config_body: str, name: str = "m") -> Path:
    return make_model(tmp_path, name, config_body, {"1/model.py": "pass\n"})


# ---------------------------------------------------------------- config.pbtxt parsing


def test_parse_real_triton_config() -> None:
    cfg = parse_config(
        ADD_ONE.replace("dims: [ 4 ]", "dims: [ -1 ]", 1)
        + 'parameters: { key: "EXECUTION_ENV_PATH"\n'
        + '  value: { string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" } }\n'
    )
    assert (cfg.name, cfg.backend, cfg.max_batch_size) == ("add_one", "python", 8)
    assert list(cfg.input[0].dims) == [-1]
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert cfg.parameters["EXECUTION_ENV_PATH"].string_value.endswith("env.tar.gz")
    assert backend_of(cfg) == "python"
    assert inputs_of(cfg) == [TensorSpec("X", "FP32", (-1,))]
    assert outputs_of(cfg) == [TensorSpec("Y", "FP32", (4,))]
    assert version_policy_of(cfg) == VersionPolicy("latest", num_versions=1)


@pytest.mark.parametrize(
    ("text", "line", "message", "fix"),
    [
        ('name: "m"\nmax_batchsize: 4\n', 2, 'no field named "max_batchsize"', "spelling"),
        ('input [ {\n  name: "x"\n  data_type: FLOAT32\n} ]', 3, "FLOAT32", "TYPE_FP32"),
        ('name: "m"\n\nmax_batch_size: ${triton_max_batch_size}\n', 3, "integer", "fill_template"),
        ('name: "a"\nname: "b"\n', 2, 'multiple "name"', "keep only one"),
        ('name: "m"\ninput [ { name: "x" ', 2, 'Expected "}"', "syntax"),
        ("dynamic_batching {}\nsequence_batching {}\n", 2, "oneof", "keep only one"),
    ],
)
def test_syntax_errors_carry_file_line_and_fix(text: str, line: int, message: str, fix: str):
    with pytest.raises(LayoutError) as caught:
        parse_config(text, "/repo/m/config.pbtxt")
    [problem] = caught.value.problems
    assert (problem.path, problem.line) == ("/repo/m/config.pbtxt", line)
    assert message in problem.message and fix in problem.fix
    assert f"/repo/m/config.pbtxt:{line}" in str(caught.value)


def test_render_and_json_round_trip() -> None:
    cfg = parse_config(ADD_ONE)
    assert parse_config(render_config(cfg)) == cfg
    as_json = config_to_json(cfg)
    assert json.loads(as_json)["max_batch_size"] == 8  # proto field names, as Triton prints
    assert json_format.Parse(as_json, ModelConfig()) == cfg


def test_with_specific_version() -> None:
    text = ADD_ONE + "version_policy { latest { num_versions: 2 } }\n"
    pinned = parse_config(with_specific_version(text, 3))
    assert version_policy_of(pinned) == VersionPolicy("specific", versions=(3,))
    pinned.ClearField("version_policy")
    assert pinned == parse_config(ADD_ONE)  # nothing else changed
    assert "versions: 5" in with_specific_version(parse_config(ADD_ONE), 5)
    with pytest.raises(LayoutError, match="not a model version"):
        with_specific_version(ADD_ONE, -1)


def test_versions_to_load_follows_triton_policies() -> None:
    def load(policy: str) -> list[int]:
        return versions_to_load(parse_config(ADD_ONE + policy), [1, 2, 3])

    assert load("") == [3]
    assert load("version_policy { latest { num_versions: 2 } }") == [3, 2]
    assert load("version_policy { all {} }") == [3, 2, 1]
    assert load("version_policy { specific { versions: [1, 7] } }") == [1]


def test_datatype_names_are_triton_wire_names() -> None:
    cfg = parse_config('input [ { name: "s" data_type: TYPE_STRING dims: [1] } ]')
    assert inputs_of(cfg)[0].datatype == "BYTES"


def test_config_loads_without_grpc() -> None:
    """Only tritonclient[http] is a dependency: the config protobuf must not need grpc."""
    code = (
        "import sys; sys.modules['grpc'] = None\n"
        "from modelrepo.layout import parse_config\n"
        "assert parse_config('name: \"m\" max_batch_size: 2').max_batch_size == 2\n"
        "assert 'tritonclient.grpc' not in sys.modules\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


# ---------------------------------------------------------------- realistic layouts pass


def test_tensorrt_llm_ensemble_passes() -> None:
    names = {"ensemble", "preprocessing", "tensorrt_llm", "postprocessing"}
    root = LAYOUTS / "inflight_batcher_llm"
    layouts = {n: validate_model_dir(FS, str(root / n), repository_fs_names=names) for n in names}
    assert {n: layout.backend for n, layout in layouts.items()} == {
        "ensemble": "ensemble",
        "preprocessing": "python",
        "tensorrt_llm": "tensorrtllm",
        "postprocessing": "python",
    }
    assert all(not layout.warnings for layout in layouts.values())
    assert layouts["tensorrt_llm"].versions == {1: [(".gitkeep", 0)]}
    assert layouts["preprocessing"].versions[1][0][0] == "model.py"
    assert ("config.pbtxt", (root / "ensemble/config.pbtxt").stat().st_size) in layouts[
        "ensemble"
    ].files
    assert expected_model_file(layouts["tensorrt_llm"].config) is None


def test_python_model_with_dynamic_batching_passes(tmp_path: Path) -> None:
    folder = make_model(tmp_path, "add_one", ADD_ONE, {"1/model.py": "x = 1\n", "2/model.py": ""})
    layout = validate_model_dir(FS, str(folder))
    assert (layout.name, layout.backend, layout.warnings) == ("add_one", "python", [])
    assert layout.versions == {1: [("model.py", 6)], 2: [("model.py", 0)]}
    assert layout.files == [("1/model.py", 6), ("2/model.py", 0), ("config.pbtxt", len(ADD_ONE))]
    assert layout.config_text == ADD_ONE and layout.total_bytes == 6 + len(ADD_ONE)


def test_onnx_model_passes(tmp_path: Path) -> None:
    config = f'platform: "onnxruntime_onnx"\nmax_batch_size: 16\n{IO}'
    folder = make_model(tmp_path, "resnet", config, {"1/model.onnx": "onnx"})
    assert validate_model_dir(FS, str(folder)).backend == "onnxruntime"
    # large ONNX models are a folder named model.onnx holding the weights
    folder = make_model(
        tmp_path, "big", config, {"1/model.onnx/model.onnx": "", "1/model.onnx/w": ""}
    )
    assert validate_model_dir(FS, str(folder)).versions[1] == [
        ("model.onnx/model.onnx", 0),
        ("model.onnx/w", 0),
    ]


def test_modelrepo_bookkeeping_and_triton_folders_are_skipped(tmp_path: Path) -> None:
    folder = make_model(
        tmp_path,
        "add_one",
        ADD_ONE,
        {
            "1/model.py": "",
            ".modelrepo/staging-x/model.py": "",
            ".ipynb_checkpoints/config-checkpoint.pbtxt": "",
            "warmup/sample": "",
        },
    )
    layout = validate_model_dir(FS, str(folder))
    assert not layout.warnings
    assert not any(rel.startswith(".modelrepo") for rel, _ in layout.files)


def test_validation_uses_one_listing_and_reads_only_the_config(tmp_path: Path) -> None:
    """The PVC filesystem answers find() in one round trip: nothing else may list or stat."""
    folder = make_model(tmp_path, "add_one", ADD_ONE, {"1/model.py": "", "1/data/w.bin": "w"})
    calls: list[str] = []

    class OnlyFindAndCat:  # a real filesystem, narrowed to the calls validation may make
        _strip_protocol = staticmethod(FS._strip_protocol)

        def find(self, path: str, **kwargs: object) -> dict:
            calls.append(f"find {Path(path).name}")
            return FS.find(path, **kwargs)

        def cat_file(self, path: str) -> bytes:
            calls.append(f"cat {Path(path).name}")
            return FS.cat_file(path)

    validate_model_dir(OnlyFindAndCat(), str(folder))
    assert calls == ["find add_one", "cat config.pbtxt"]


def test_works_on_other_fsspec_filesystems() -> None:
    mem = MemoryFileSystem()
    mem.pipe("/repo/add_one/config.pbtxt", ADD_ONE.encode())
    mem.pipe("/repo/add_one/1/model.py", b"pass\n")
    try:
        assert validate_model_dir(mem, "memory://repo/add_one").versions == {1: [("model.py", 5)]}
    finally:
        mem.rm("/repo", recursive=True)


# ---------------------------------------------------------------- folder-level rules


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="does not exist") as caught:
        validate_model_dir(FS, str(tmp_path / "nope"))
    assert caught.value.problems[0].path == str(tmp_path / "nope")


def test_missing_config_suggests_one_for_the_files_present(tmp_path: Path) -> None:
    folder = make_model(tmp_path, "m", None, {"1/model.py": ""})
    problem = only(problems_of(folder), "missing")
    assert problem.path == f"{folder}/config.pbtxt"
    assert 'backend: "python"' in problem.fix
    folder = make_model(tmp_path, "o", None, {"1/model.onnx": ""})
    assert 'platform: "onnxruntime_onnx"' in problems_of(folder)[0].fix


def test_syntax_error_in_folder_names_config_and_line(tmp_path: Path) -> None:
    folder = python_model(tmp_path, 'name: "m"\nbackend: "python"\nmax_batch_size: 8x\n')
    [problem] = problems_of(folder)
    assert (problem.path, problem.line) == (f"{folder}/config.pbtxt", 3)


def test_config_name_must_match_folder(tmp_path: Path) -> None:
    folder = python_model(tmp_path, f'backend: "python"\nname: "other"\n{IO}')
    problem = only(problems_of(folder), "differs from the model folder name 'm'")
    assert problem.line == 2 and 'name: "m"' in problem.fix
    # the name the model gets in the repository is what counts
    validate_model_dir(FS, str(folder), name="other")
    # an empty name is filled in by Triton from the folder
    validate_model_dir(FS, str(python_model(tmp_path, f'backend: "python"\n{IO}', "n")))


def test_no_numeric_version_folder(tmp_path: Path) -> None:
    folder = make_model(tmp_path, "m", f'backend: "python"\n{IO}', {"model.py": ""})
    problem = only(problems_of(folder), "no version folder")
    assert problem.path == str(folder) and f"{folder}/1/" in problem.fix


def test_ignored_version_folders_warn(tmp_path: Path) -> None:
    folder = make_model(
        tmp_path, "m", f'backend: "python"\n{IO}', {"1/model.py": "", "01/model.py": "", "v2/x": ""}
    )
    warnings = validate_model_dir(FS, str(folder)).warnings
    assert {(w.path, "rename it to 1" in w.fix) for w in warnings} == {
        (f"{folder}/01", True),
        (f"{folder}/v2", False),
    }
    # with only ignored folders nothing would load
    folder = make_model(tmp_path, "n", f'backend: "python"\n{IO}', {"01/model.py": ""})
    only(problems_of(folder), "no version folder")


def test_version_policy_selecting_no_present_version(tmp_path: Path) -> None:
    config = f'backend: "python"\n{IO}version_policy {{ specific {{ versions: [ 3 ] }} }}\n'
    problem = only(problems_of(python_model(tmp_path, config)), "selects none")
    assert problem.path.endswith("config.pbtxt") and problem.line == 4


# ---------------------------------------------------------------- backend / model file rules


@pytest.mark.parametrize(
    ("config", "good", "wrong_kind"),
    [
        ('platform: "tensorrt_plan"', "model.plan", "model.plan/"),
        ('backend: "tensorrt"', "model.plan", None),
        ('platform: "onnxruntime_onnx"', "model.onnx", None),
        ('backend: "onnxruntime"', "model.onnx", None),
        ('platform: "pytorch_libtorch"', "model.pt", "model.pt/"),
        ('backend: "pytorch"', "model.pt", None),
        ('platform: "tensorflow_savedmodel"', "model.savedmodel/", "model.savedmodel"),
        ('platform: "tensorflow_graphdef"', "model.graphdef", "model.graphdef/"),
        ('backend: "python"', "model.py", "model.py/"),
        ('backend: "openvino"', "model.xml", None),
        ('backend: "python"\ndefault_model_filename: "serve.py"', "serve.py", None),
    ],
)
def test_default_model_file_per_backend(
    tmp_path: Path, config: str, good: str, wrong_kind: str | None
) -> None:
    text = f"{config}\nmax_batch_size: 4\n{IO}"
    as_entry = {f"1/{good.rstrip('/')}" + ("/saved_model.pb" if good.endswith("/") else ""): ""}
    validate_model_dir(FS, str(make_model(tmp_path, "ok", text, as_entry)))

    folder = make_model(tmp_path, "missing", text, {"1/other.bin": ""})
    problem = only(problems_of(folder), "missing")
    assert (
        problem.path == f"{folder}/1/{good.rstrip('/')}" and "default_model_filename" in problem.fix
    )

    if wrong_kind:
        entry = {f"1/{wrong_kind.rstrip('/')}" + ("/x" if wrong_kind.endswith("/") else ""): ""}
        folder = make_model(tmp_path, "kind", text, entry)
        only(problems_of(folder), "must be a")


def test_missing_model_file_is_checked_in_every_version(tmp_path: Path) -> None:
    folder = make_model(tmp_path, "m", f'backend: "python"\n{IO}', {"1/model.py": "", "2/x": ""})
    problem = only(problems_of(folder), "missing")
    assert problem.path == f"{folder}/2/model.py" and "LOADING" in problem.message


def test_neither_backend_nor_platform(tmp_path: Path) -> None:
    problem = only(problems_of(python_model(tmp_path, IO)), "neither a backend nor a platform")
    assert 'backend: "python"' in problem.fix


def test_unknown_platform_and_mismatched_pair(tmp_path: Path) -> None:
    problem = only(
        problems_of(python_model(tmp_path, f'platform: "onnx"\n{IO}', "a")), "no platform"
    )
    assert problem.line == 1 and "onnxruntime_onnx" in problem.fix
    config = f'backend: "onnxruntime"\nplatform: "tensorrt_plan"\n{IO}'
    folder = make_model(tmp_path, "b", config, {"1/model.onnx": ""})
    assert only(problems_of(folder), "does not go with").line == 2
    folder = make_model(tmp_path, "c", f'backend: "tensorflow"\n{IO}', {"1/model.graphdef": ""})
    only(problems_of(folder), "needs a platform")


def test_unfilled_template_placeholder_in_a_string(tmp_path: Path) -> None:
    config = (
        f'backend: "python"\n{IO}'
        'parameters { key: "tokenizer_dir" value: { string_value: "${tokenizer_dir}" } }\n'
    )
    problem = only(problems_of(python_model(tmp_path, config)), "placeholder")
    assert problem.line == 4 and "fill_template" in problem.fix


# ---------------------------------------------------------------- batching and tensor rules


def test_negative_max_batch_size(tmp_path: Path) -> None:
    problem = only(
        problems_of(python_model(tmp_path, f'backend: "python"\nmax_batch_size: -1\n{IO}')),
        "max_batch_size is -1",
    )
    assert problem.line == 2


def test_dynamic_batching_without_batching_warns(tmp_path: Path) -> None:
    folder = python_model(
        tmp_path, f'backend: "python"\nmax_batch_size: 0\n{IO}dynamic_batching {{ }}\n'
    )
    [warning] = validate_model_dir(FS, str(folder)).warnings
    assert "never batches" in warning.message and warning.line == 5


def test_preferred_batch_size_above_max_batch_size(tmp_path: Path) -> None:
    batching = "dynamic_batching { preferred_batch_size: [ 2, 8 ] }\n"
    config = f'backend: "python"\nmax_batch_size: 4\n{IO}{batching}'
    only(problems_of(python_model(tmp_path, config)), "preferred_batch_size 8")


def test_priority_levels(tmp_path: Path) -> None:
    config = (
        f'backend: "python"\nmax_batch_size: 4\n{IO}dynamic_batching {{ priority_levels: 2 }}\n'
    )
    only(problems_of(python_model(tmp_path, config)), "default_priority_level 0")


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ("data_type: TYPE_FP32 dims: [ 4 ]", "input #1 has no name"),
        ('name: "X" dims: [ 4 ]', "input 'X' has no data_type"),
        ('name: "X" data_type: TYPE_FP32', "input 'X' has no dims"),
        ('name: "X" data_type: TYPE_FP32 dims: [ 4, 0 ]', "dims [4, 0]"),
        ('name: "X" data_type: TYPE_FP32 dims: [ -2 ]', "dims [-2]"),
        (
            'name: "X" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 3 ] }',
            "different numbers",
        ),
        (
            'name: "X" data_type: TYPE_FP32 dims: [ 2, -1 ] reshape: { shape: [ -1, 2 ] }',
            "different numbers",
        ),
        ('name: "X" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 0 ] }', "reshape [0]"),
        ('name: "X" data_type: TYPE_FP32 dims: [ 4 ] format: FORMAT_NCHW', "3 dims"),
        ('name: "X" data_type: TYPE_INT32 dims: [ 1 ] is_shape_tensor: true', "shape tensor"),
    ],
)
def test_bad_tensors(tmp_path: Path, tensor: str, message: str) -> None:
    config = f'backend: "python"\nmax_batch_size: 4\ninput [\n  {{ {tensor} }}\n]\n'
    problem = only(problems_of(python_model(tmp_path, config)), message)
    expected_line = 4 if "name:" in tensor else 3  # the tensor's name line, else its block
    assert problem.line == expected_line and problem.path.endswith("config.pbtxt")


def test_empty_reshape_needs_batching(tmp_path: Path) -> None:
    tensor = 'input [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] reshape: { shape: [ ] } } ]'
    only(
        problems_of(python_model(tmp_path, f'backend: "python"\n{tensor}\n', "a")), "empty reshape"
    )
    validate_model_dir(
        FS, str(python_model(tmp_path, f'backend: "python"\nmax_batch_size: 2\n{tensor}\n', "b"))
    )


def test_valid_reshapes_pass(tmp_path: Path) -> None:
    config = """\
    backend: "python"
    max_batch_size: 2
    input [
      { name: "A" data_type: TYPE_FP32 dims: [ 2, 4, -1, 6 ] reshape: { shape: [ 8, -1, 1, 6 ] } },
      { name: "B" data_type: TYPE_FP32 dims: [ 6 ] reshape: { shape: [ 2, 3 ] } }
    ]
    """
    validate_model_dir(FS, str(python_model(tmp_path, config)))


def test_missing_data_type_only_warns_where_the_backend_fills_it(tmp_path: Path) -> None:
    config = 'platform: "onnxruntime_onnx"\nmax_batch_size: 4\ninput [ { name: "X" } ]\n'
    folder = make_model(tmp_path, "m", config, {"1/model.onnx": ""})
    [warning] = validate_model_dir(FS, str(folder)).warnings
    assert "onnxruntime backend" in warning.message and warning.line == 3


def test_duplicate_tensor_names_warn(tmp_path: Path) -> None:
    tensor = '{ name: "X" data_type: TYPE_FP32 dims: [1] }'
    config = f'backend: "python"\ninput [ {tensor},\n{tensor} ]\n'
    [warning] = validate_model_dir(FS, str(python_model(tmp_path, config))).warnings
    assert "declared twice" in warning.message


def test_batch_input_source_must_be_an_input(tmp_path: Path) -> None:
    batch_input = (
        'batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "N" data_type: TYPE_INT32 '
        'source_input: "Z" } ]\n'
    )
    config = f'backend: "python"\nmax_batch_size: 4\n{IO}{batch_input}'
    only(problems_of(python_model(tmp_path, config)), "source_input 'Z'")


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    config = (
        'name: "x"\nbackend: "python"\nmax_batch_size: -2\ninput [ { name: "X" dims: [ 0 ] } ]\n'
    )
    folder = make_model(tmp_path, "m", config, {"1/other.txt": ""})
    messages = " | ".join(p.message for p in problems_of(folder))
    for part in ("differs from", "max_batch_size is -2", "no data_type", "dims [0]", "missing"):
        assert part in messages


# ---------------------------------------------------------------- ensembles

ENSEMBLE = """\
name: "pipe"
platform: "ensemble"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_STRING dims: [ -1 ] } ]
ensemble_scheduling {
  step [
    {
      model_name: "pre"
      model_version: -1
      input_map { key: "QUERY" value: "IN" }
      output_map { key: "IDS" value: "_IDS" }
    },
    {
      model_name: "post"
      model_version: -1
      input_map { key: "TOKENS" value: "_IDS" }
      output_map { key: "TEXT" value: "OUT" }
    }
  ]
}
"""


def ensemble_problems(
    tmp_path: Path, text: str, names: set[str] | None = None
) -> list[LayoutProblem]:
    folder = make_model(tmp_path, "pipe", text, {"1": None})
    return problems_of(folder, repository_fs_names={"pre", "post"} if names is None else names)


def test_ensemble_passes_with_an_empty_version_folder(tmp_path: Path) -> None:
    folder = make_model(tmp_path, "pipe", ENSEMBLE, {"1": None})
    layout = validate_model_dir(FS, str(folder), repository_fs_names={"pre", "post", "pipe"})
    assert layout.versions == {1: []} and layout.backend == "ensemble"
    # without the repository's names the steps' models are not checked
    validate_model_dir(FS, str(folder))


def test_ensemble_step_model_must_exist(tmp_path: Path) -> None:
    problem = only(ensemble_problems(tmp_path, ENSEMBLE, {"pre"}), "runs model 'post'")
    assert problem.line == 15 and "push 'post'" in problem.fix


def test_ensemble_reads_a_tensor_nobody_writes(tmp_path: Path) -> None:
    text = ENSEMBLE.replace('key: "TOKENS" value: "_IDS"', 'key: "TOKENS" value: "_ids"')
    problems = ensemble_problems(tmp_path, text)
    assert only(problems, "reads tensor '_ids'").line == 17
    only(problems, "'_IDS' written by step 1 is never used")
    only(problems, "output 'OUT' can never be computed")


def test_ensemble_output_written_by_no_step(tmp_path: Path) -> None:
    text = ENSEMBLE.replace('value: "OUT"', 'value: "TEXT_OUT"')
    problems = ensemble_problems(tmp_path, text)
    assert "OUT" in only(problems, "output 'OUT' is written by no step").fix
    only(problems, "'TEXT_OUT' written by step 2 is never used")


def test_ensemble_input_read_by_no_step(tmp_path: Path) -> None:
    text = ENSEMBLE.replace(
        "input [ {", 'input [ { name: "EXTRA" data_type: TYPE_INT32 dims: [ 1 ] }, {'
    )
    assert only(ensemble_problems(tmp_path, text), "input 'EXTRA'").line == 4


def test_ensemble_tensor_written_twice(tmp_path: Path) -> None:
    text = ENSEMBLE.replace('key: "TEXT" value: "OUT"', 'key: "TEXT" value: "_IDS"')
    only(ensemble_problems(tmp_path, text), "written by step 1 and again by step 2")


def test_ensemble_cannot_run_itself_or_carry_instance_groups(tmp_path: Path) -> None:
    text = ENSEMBLE.replace('"pre"', '"pipe"') + "instance_group [ { kind: KIND_CPU } ]\n"
    problems = ensemble_problems(tmp_path, text, {"pipe", "post"})
    only(problems, "runs the ensemble itself")
    assert only(problems, "cannot have instance_group").line == 22


def test_ensemble_platform_and_scheduling_go_together(tmp_path: Path) -> None:
    no_steps = ENSEMBLE.split("ensemble_scheduling")[0]
    only(ensemble_problems(tmp_path / "a", no_steps), "without ensemble_scheduling")
    as_python = ENSEMBLE.replace('platform: "ensemble"', 'backend: "python"')
    folder = make_model(tmp_path / "b", "pipe", as_python, {"1/model.py": ""})
    only(problems_of(folder), 'platform is not "ensemble"')
    with_backend = ENSEMBLE.replace(
        'platform: "ensemble"', 'platform: "ensemble"\nbackend: "python"'
    )
    only(ensemble_problems(tmp_path / "c", with_backend), "must not set a backend")


def test_ensemble_step_without_maps(tmp_path: Path) -> None:
    text = ENSEMBLE.replace('      output_map { key: "IDS" value: "_IDS" }\n', "")
    problems = ensemble_problems(tmp_path, text)
    assert only(problems, "step 1 ('pre') has no output_map").line == 9


# ---------------------------------------------------------------- one version's files


def test_validate_version_files(tmp_path: Path) -> None:
    folder = tmp_path / "v"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.py").write_text("x")
    (folder / "sub" / "w.bin").write_text("ww")
    assert validate_version_files(FS, str(folder), ADD_ONE) == [("model.py", 1), ("sub/w.bin", 2)]
    (folder / "model.py").unlink()
    with pytest.raises(LayoutError) as caught:
        validate_version_files(FS, str(folder), parse_config(ADD_ONE))
    [problem] = caught.value.problems
    assert problem.path == f"{folder}/model.py" and problem.fix
    ensemble = parse_config(ENSEMBLE)
    assert validate_version_files(FS, str(folder), ensemble) == [("sub/w.bin", 2)]


def test_per_gpu_plan_files_satisfy_tensorrt(tmp_path: Path) -> None:
    config = (
        f'platform: "tensorrt_plan"\ncc_model_filenames {{ key: "8.6" value: "sm86.plan" }}\n{IO}'
    )
    validate_model_dir(FS, str(make_model(tmp_path, "m", config, {"1/sm86.plan": ""})))
