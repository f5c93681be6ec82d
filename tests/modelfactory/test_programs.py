"""Bring your own model: a torch.export program registers as a model; nothing of an upload is unpickled,
and no graph runs before each of its operators is checked."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modelfactory.models import ModelVersion, RegisteredModel
from modelfactory.programs import expr_safe
from tests.modelfactory.programs import (
    ResidualNet,
    exported,
    pickled_payload,
    rewritten,
    upload,
    with_model_json,
    with_pickled_weight,
)


@pytest.fixture(scope="module")
def program() -> bytes:
    torch.manual_seed(0)
    return exported(ResidualNet(), torch.randn(4, 64))


def register(api, name: str, raw: bytes, **fields):
    return api.post("/api/models/", {"name": name, "file": upload(raw), **fields}, format="multipart")


def nothing_kept(data_dir: Path) -> None:
    assert not RegisteredModel.objects.exists() and not ModelVersion.objects.exists()
    assert [p for p in data_dir.rglob("*") if p.is_file()] == []


def test_a_program_registers_with_its_shapes_read_from_the_graph(api, program):
    response = register(api, "resnet-ish", program, description="mine")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["architecture"] == "program"
    assert body["params"]["input_shape"] == [64] and body["params"]["num_classes"] == 10
    assert body["versions"][0]["source_format"] == "program"


def test_the_registered_program_holds_the_uploaded_weights_and_its_running_statistics(api, program):
    from modelfactory.selectors import model_version_get, model_version_load

    assert register(api, "mine", program).status_code == 201
    model = model_version_load(version=model_version_get(owner=RegisteredModel.objects.get().owner, name="mine"))
    state = model.state_dict()
    assert set(state) >= {"inp.weight", "bn.running_mean", "bn.running_var", "head.bias"}
    x = torch.randn(32, 64)
    reference = ResidualNet()
    reference.load_state_dict(state)
    reference.eval()
    model.eval()
    assert torch.allclose(model(x), reference(x), atol=1e-5)


def test_train_and_eval_switch_dropout_and_batch_norm_like_the_eager_module(api, program):
    from modelfactory.selectors import model_version_get, model_version_load

    assert register(api, "modes", program).status_code == 201
    model = model_version_load(version=model_version_get(owner=RegisteredModel.objects.get().owner, name="modes"))
    x = torch.randn(64, 64)
    model.eval()
    assert torch.equal(model(x), model(x))  # dropout off, running statistics used
    model.train()
    before = model.state_dict()["bn.running_mean"].clone()
    first, second = model(x), model(x)
    assert not torch.equal(first, second)  # dropout drops
    assert not torch.equal(model.state_dict()["bn.running_mean"], before)  # batch statistics update the buffers
    model.eval()
    assert torch.equal(model(x), model(x))


def test_a_fixed_batch_size_is_refused_with_how_to_export(api, data_dir):
    raw = exported(ResidualNet(), torch.randn(4, 64), dynamic=False)
    response = register(api, "fixed", raw)
    assert response.status_code == 400
    assert "batch size is fixed" in response.json()["error"]
    assert "Dim('batch')" in response.json()["error"]
    nothing_kept(data_dir)


def test_a_program_with_architecture_given_is_refused(api, program, data_dir):
    response = register(api, "both", program, architecture="simple_mlp")
    assert response.status_code == 400
    assert response.json()["error"].startswith("A torch.export program carries its own architecture")
    nothing_kept(data_dir)


def test_a_pickled_weight_is_refused_and_never_unpickled(api, program, data_dir, tmp_path_factory):
    created = tmp_path_factory.mktemp("victim") / "created-by-upload"
    response = register(api, "pickled", with_pickled_weight(program, created))
    assert response.status_code == 400
    assert "stored as a pickle, which CLaaS never loads" in response.json()["error"]
    assert not created.exists()
    nothing_kept(data_dir)


def test_pickled_sample_inputs_and_guard_code_never_run(api, program, tmp_path_factory):
    # torch.export.load unpickles sample inputs (falling back to weights_only=False) and compiles guards_code.
    victim = tmp_path_factory.mktemp("victim")
    by_pickle, by_guard = victim / "by-pickle", victim / "by-guard"

    def guard(doc):
        doc["guards_code"] = [f"__import__('pathlib').Path('{by_guard}').touch()"]

    raw = rewritten(with_model_json(program, guard), {"data/sample_inputs/model.pt": pickled_payload(by_pickle)})
    response = register(api, "sneaky", raw)
    assert response.status_code == 201  # the payloads are dropped unread, the model itself is fine
    from modelfactory.selectors import model_version_get, model_version_load

    model = model_version_load(version=model_version_get(owner=RegisteredModel.objects.get().owner, name="sneaky"))
    model(torch.zeros(3, 64))
    assert not by_pickle.exists() and not by_guard.exists()


def test_a_shape_expression_that_is_python_is_refused(api, program, data_dir, tmp_path_factory):
    # sympy evaluates expression strings as Python.
    created = tmp_path_factory.mktemp("victim") / "by-sympify"

    def inject(doc):
        values = doc["graph_module"]["graph"]["tensor_values"]
        first = next(iter(values.values()))
        first["sizes"][0] = {"as_expr": {"expr_str": f"__import__('pathlib').Path('{created}').touch()",
                                         "hint": None}}

    response = register(api, "expr", with_model_json(program, inject))
    assert response.status_code == 400
    assert response.json()["error"] == "The program has a shape expression CLaaS does not accept."
    assert not created.exists()
    nothing_kept(data_dir)


def test_a_program_that_reads_a_file_in_its_forward_is_refused_before_it_runs(api, program, data_dir,
                                                                           tmp_path_factory):
    # torch.export cannot trace torch.from_file, but a hand-edited graph can call it: the first step reads
    # a server file into the activations, which the output would then leak through predictions.
    secret = tmp_path_factory.mktemp("server") / "secret"
    secret.write_bytes(b"SECRET_KEY=not-for-tenants-0123456789abcdef")

    def read_file(doc):
        node = doc["graph_module"]["graph"]["nodes"][0]
        node["target"] = "torch.ops.aten.from_file.default"
        node["inputs"] = [{"name": "filename", "arg": {"as_string": str(secret)}, "kind": 1},
                          {"name": "shared", "arg": {"as_none": True}, "kind": 1},
                          {"name": "size", "arg": {"as_int": 10}, "kind": 1}]

    response = register(api, "reader", with_model_json(program, read_file))
    assert response.status_code == 400
    assert response.json()["error"].startswith("The program calls torch.ops.aten.from_file.default, which is not")
    assert b"SECRET" not in response.content
    nothing_kept(data_dir)


@pytest.mark.parametrize("target", ["torch.load", "torch.ops.aten.empty.memory_format", "torch.ops.mylib.op.default",
                                    "torch.ops.aten.resize_.default", "torch.ops.aten.set_.source_Tensor",
                                    "builtins.eval"])
def test_operators_outside_the_allow_list_are_refused(api, program, data_dir, target):
    def swap(doc):
        doc["graph_module"]["graph"]["nodes"][0]["target"] = target

    response = register(api, "swapped", with_model_json(program, swap))
    assert response.status_code == 400
    assert response.json()["error"].startswith(f"The program calls {target}, which is not an allowed")
    nothing_kept(data_dir)


def test_a_subgraph_argument_is_refused(api, program, data_dir):
    def subgraph(doc):
        doc["graph_module"]["graph"]["nodes"][0]["inputs"][0]["arg"] = {"as_graph": {"name": "g", "graph": {}}}

    response = register(api, "hop", with_model_json(program, subgraph))
    assert response.status_code == 400
    assert "as_graph" in response.json()["error"]
    nothing_kept(data_dir)


def test_an_unknown_archive_member_is_refused(api, program, data_dir):
    response = register(api, "extra", rewritten(program, {"code/__torch__.py": b"import os"}))
    assert response.status_code == 400
    assert "a member torch.export.save does not write" in response.json()["error"]
    nothing_kept(data_dir)


def test_programs_over_the_cost_limits_are_refused_before_a_real_pass(api, settings, program, data_dir):
    settings.MAX_MODEL_FLOPS = 1000
    response = register(api, "costly", program)
    assert response.status_code == 400
    assert "FLOPs per sample" in response.json()["error"]
    nothing_kept(data_dir)


def test_expression_grammar():
    symbols = {"s77"}
    assert expr_safe("Symbol('s77', positive=True, integer=True)", symbols)
    assert expr_safe("Mul(Integer(32), Symbol('s77', positive=True, integer=True))", symbols)
    assert expr_safe("32*s77 + 1", symbols)
    for bad in ("__import__('os')", "Symbol('s78')", "s77.__class__", "lambda: 1", "open('x')", "[1]", "'a'",
                "Symbol('s77'", "getattr(s77, 'x')"):
        assert not expr_safe(bad, symbols), bad


def test_a_new_version_of_a_program_model_takes_a_state_dict(api, program):
    import io

    assert register(api, "versions", program).status_code == 201
    torch.manual_seed(5)
    buffer = io.BytesIO()
    torch.save(ResidualNet().state_dict(), buffer)
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = api.post("/api/models/versions/versions/", {"file": SimpleUploadedFile("w.pt", buffer.getvalue())},
                        format="multipart")
    assert response.status_code == 201, response.content
    assert response.json()["version"] == 2
    assert json.loads(json.dumps(response.json()))["source_format"] == "state_dict"


def test_deleting_the_last_model_of_a_program_removes_its_file(api, program, data_dir,
                                                               django_capture_on_commit_callbacks):
    assert register(api, "a", program).status_code == 201
    assert register(api, "b", program).status_code == 201
    stored = list((data_dir / "files" / "programs").iterdir())
    assert len(stored) == 1  # stored once under its digest
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete("/api/models/a").status_code == 204
    assert stored[0].is_file()
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete("/api/models/b").status_code == 204
    assert not stored[0].exists()


def test_the_program_reader_was_written_for_the_installed_torch():
    # It reaches into torch's private serde: a torch upgrade must be checked by hand, not slip by.
    from modelfactory.programs import program_torch_check

    program_torch_check()
