"""Uploaded torch.export programs (`.pt2`), read without unpickling and checked before any of it runs.

`torch.export.load` falls back to `torch.load(weights_only=False)` for weights, constants and sample
inputs, builds Python guard functions from the archive's `guards_code`, and sympifies (evaluates) the
archive's shape expressions. None of that runs here: the archive's members are read one by one, the
weights are built from their raw bytes and declared dtype, shape and strides, every node of the graph
must name an allowed operator (program_ops), every shape expression must parse under a tiny grammar,
guards and node metadata are dropped, and only then does torch's deserializer build the program.

Written against torch 2.14 (`torch._export.serde`): program_torch_check() says loudly when it changes.
"""
from __future__ import annotations

import io
import json
import math
import re
import zipfile
from dataclasses import dataclass
from typing import IO, Any, Union
from pathlib import Path

from claas_site.errors import InvalidInput, PayloadTooLarge
from claas_site.lazy import lazy_import
from modelfactory.program_ops import operator_allowed

torch = lazy_import("torch")

Source = Union[str, Path, IO[bytes]]
WRITTEN_FOR_TORCH = "2.14."

HOW_TO_EXPORT = ("export it with torch.export.save(torch.export.export(model.eval(), (x,), "
                 "dynamic_shapes=({0: torch.export.Dim('batch')},)), path)")
NOT_A_PROGRAM = f"The file is not a torch.export program; {HOW_TO_EXPORT}."
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_NODES = 20_000
MAX_STRING = 200
# One root folder (its name is free), then exactly the members torch.export.save writes for one model.
MEMBER_RE = re.compile(r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
                       r"|models/model\.json|data/weights/model_weights_config\.json|data/weights/weight_\d+"
                       r"|data/constants/model_constants_config\.json|data/constants/tensor_constant_?\d+"
                       r"|data/sample_inputs/model\.pt)")
# Values a node's argument may take; subgraphs, operators, custom objects and the like are refused.
ARG_KINDS = frozenset({
    "as_none", "as_tensor", "as_tensors", "as_int", "as_ints", "as_float", "as_floats", "as_bool", "as_bools",
    "as_string", "as_sym_int", "as_sym_ints", "as_sym_float", "as_sym_bool", "as_scalar_type",
    "as_memory_format", "as_layout", "as_device", "as_optional_tensors",
})
INPUT_SPECS = frozenset({"parameter", "buffer", "user_input", "tensor_constant"})
OUTPUT_SPECS = frozenset({"user_output", "buffer_mutation"})
# Shape expressions: integers, declared size symbols, arithmetic and sympy's integer functions.
# torch writes them in sympy's srepr form: Symbol('s77', positive=True, integer=True), Mul(Integer(2), ...).
EXPR_TOKEN_RE = re.compile(r"\s*(?:(\d+|'[a-z]{1,3}\d{1,6}')|([A-Za-z_]\w*)|(\*\*|//|[-+*/%(),=]))")
EXPR_FUNCTIONS = frozenset({"Max", "Min", "FloorDiv", "Mod", "PythonMod", "CeilToInt", "FloorToInt",
                            "TruncToInt", "IntTrueDiv", "CleanDiv", "Symbol", "Integer", "Add", "Mul", "Pow",
                            "Rational", "positive", "integer", "nonnegative", "real", "finite", "True", "False"})
SYMBOL_RE = re.compile(r"[a-z]{1,3}\d{1,6}")
DTYPES = {7: "float32", 6: "float16", 13: "bfloat16", 8: "float64", 5: "int64", 4: "int32", 12: "bool",
          1: "uint8", 2: "int8"}


@dataclass
class ProgramArchive:
    """The parts of an uploaded `.pt2` after the checks: the graph as JSON and the raw weight bytes."""

    doc: dict[str, Any]
    weights: dict[str, tuple[dict[str, Any], bytes]]
    constants: dict[str, tuple[dict[str, Any], bytes]]
    input_shape: list[int]
    num_classes: int
    parameters: int


def program_torch_check() -> None:
    """The reader reaches into torch's private serde; a torch it was not written for must not slip by."""
    if not torch.__version__.startswith(WRITTEN_FOR_TORCH):
        raise RuntimeError(f"modelfactory/programs.py was written for torch {WRITTEN_FOR_TORCH}x and must be "
                           f"checked again for torch {torch.__version__}.")


def is_program(source: Source) -> bool:
    """Whether the upload is a torch.export archive (a zip whose members include models/<name>.json)."""
    try:
        with _zip(source) as archive:
            return any(re.fullmatch(r"[^/]+/models/[^/]+\.json", e.orig_filename) for e in archive.infolist())
    except InvalidInput:
        return False


def _zip(source: Source) -> zipfile.ZipFile:
    try:
        if hasattr(source, "read"):
            source.seek(0)
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise InvalidInput(NOT_A_PROGRAM, details={"reason": "not a zip archive"})


def program_read(*, source: Source, max_unpacked_bytes: int) -> ProgramArchive:
    """Read and check an uploaded program; nothing of it is unpickled and nothing of it runs."""
    program_torch_check()
    with _zip(source) as archive:
        entries = archive.infolist()
        unpacked = sum(e.file_size for e in entries)
        if unpacked > max_unpacked_bytes:
            raise PayloadTooLarge(f"The archive unpacks to {unpacked} bytes; the limit is {max_unpacked_bytes} bytes.",
                                  details={"unpacked_bytes": unpacked, "limit_bytes": max_unpacked_bytes})
        names = [e.orig_filename for e in entries]
        root = names[0].split("/", 1)[0] if names else ""
        members: dict[str, zipfile.ZipInfo] = {}
        for entry in entries:
            name = entry.orig_filename
            inner = name[len(root) + 1:] if root and name.startswith(root + "/") else None
            if inner is None or not MEMBER_RE.fullmatch(inner) or inner in members:
                raise InvalidInput(f"The archive has a member torch.export.save does not write ('{name[:100]}'); "
                                   f"{HOW_TO_EXPORT}.", details={"member": name[:100]})
            members[inner] = entry

        def read(inner: str, limit: int | None = None) -> bytes:
            entry = members.get(inner)
            if entry is None:
                raise InvalidInput(f"The archive has no {inner}; {HOW_TO_EXPORT}.", details={"missing": inner})
            if limit is not None and entry.file_size > limit:
                raise PayloadTooLarge(f"The archive's {inner} is {entry.file_size} bytes; at most {limit} are read.")
            with archive.open(entry) as f:
                data = f.read(entry.file_size + 1)
            if len(data) != entry.file_size:
                raise InvalidInput(NOT_A_PROGRAM, details={"reason": f"{inner} is not the size it declares"})
            return data

        doc = _json(read("models/model.json", MAX_JSON_BYTES), "models/model.json")
        weights_config = _json(read("data/weights/model_weights_config.json", MAX_JSON_BYTES), "weights config")
        constants_config = (_json(read("data/constants/model_constants_config.json", MAX_JSON_BYTES), "constants")
                            if "data/constants/model_constants_config.json" in members else {"config": {}})
        input_shape, num_classes = graph_check(doc)
        weights = _payloads(weights_config, "data/weights/", read, "weight")
        constants = _payloads(constants_config, "data/constants/", read, "constant")
    parameters = sum(math.prod(_sizes(meta)) for meta, _ in weights.values())
    return ProgramArchive(doc, weights, constants, input_shape, num_classes, parameters)


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidInput(f"The archive's {what} is not valid JSON; {HOW_TO_EXPORT}.")


def _payloads(config: Any, folder: str, read: Any, what: str) -> dict[str, tuple[dict[str, Any], bytes]]:
    """Raw bytes and tensor metadata per name; a pickled payload is refused, never loaded."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise InvalidInput(f"The archive's {what} list is not what torch.export.save writes; {HOW_TO_EXPORT}.")
    out: dict[str, tuple[dict[str, Any], bytes]] = {}
    for name, payload in entries.items():
        if not isinstance(payload, dict) or payload.get("use_pickle") is not False:
            raise InvalidInput(f"The program's {what} '{str(name)[:80]}' is stored as a pickle, which CLaaS never "
                               f"loads; {HOW_TO_EXPORT} with plain tensor {what}s.", details={what: str(name)[:80]})
        meta = payload.get("tensor_meta")
        path = payload.get("path_name")
        if not isinstance(meta, dict) or not isinstance(path, str) or "/" in path:
            raise InvalidInput(f"The program's {what} '{str(name)[:80]}' has no tensor description.")
        dtype = DTYPES.get(meta.get("dtype"))
        if dtype is None or meta.get("layout") != 7:
            raise InvalidInput(f"The program's {what} '{str(name)[:80]}' has an unsupported dtype or layout.",
                               details={what: str(name)[:80]})
        sizes, strides = _sizes(meta), _ints(meta.get("strides"))
        offset = (meta.get("storage_offset") or {}).get("as_int")
        raw = read(folder + path)
        itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
        if (not isinstance(offset, int) or offset < 0 or len(strides) != len(sizes) or any(s < 0 for s in strides)
                or (math.prod(sizes) and (offset + sum((n - 1) * s for n, s in zip(sizes, strides)) + 1) * itemsize
                    > len(raw))):
            raise InvalidInput(f"The program's {what} '{str(name)[:80]}' does not fit its stored bytes.",
                               details={what: str(name)[:80]})
        out[str(name)] = (meta, raw)
    return out


def _ints(values: Any) -> list[int]:
    if not isinstance(values, list) or len(values) > 8:
        raise InvalidInput("A tensor of the program has a shape CLaaS cannot read.")
    out = []
    for value in values:
        n = value.get("as_int") if isinstance(value, dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise InvalidInput("A stored tensor of the program has a symbolic or negative size.")
        out.append(n)
    return out


def _sizes(meta: dict[str, Any]) -> list[int]:
    return _ints(meta.get("sizes"))


# --- the graph ------------------------------------------------------------------------------
def graph_check(doc: Any) -> tuple[list[int], int]:
    """Check the serialized program in place and return (input_shape, num_classes).

    Refused: operators outside the allow-list, arguments that are subgraphs or objects, shape expressions
    outside the grammar, more than one input or output, a fixed batch size. Dropped: guard code and node
    metadata (neither is needed to run the graph and both are evaluated when loaded).
    """
    try:
        module = doc["graph_module"]
        graph = module["graph"]
        nodes = graph["nodes"]
        signature = module["signature"]
    except (TypeError, KeyError):
        raise InvalidInput(NOT_A_PROGRAM, details={"reason": "no graph"})
    if doc.get("verifiers") != ["TRAINING"]:
        raise InvalidInput(f"The program is not in torch.export's training form (it was decomposed or built "
                           f"another way); {HOW_TO_EXPORT} and upload that file unchanged.",
                           details={"verifiers": str(doc.get("verifiers"))[:80]})
    if not isinstance(nodes, list) or len(nodes) > MAX_NODES:
        raise InvalidInput(f"The program has more than {MAX_NODES} operations.")
    symbols = _symbols(doc.get("range_constraints"))
    for node in nodes:
        target = node.get("target") if isinstance(node, dict) else None
        if not isinstance(target, str) or not operator_allowed(target):
            shown = str(target)[:100]
            raise InvalidInput(f"The program calls {shown}, which is not an allowed computation operator "
                               "(file access, uninitialised memory, in-place writes and custom operators are "
                               "refused).", details={"operator": shown})
        for item in node.get("inputs") or []:
            _arg_check(item.get("arg") if isinstance(item, dict) else None, target)
        node["metadata"] = {}
    doc["guards_code"] = []
    _exprs_check(doc, symbols)
    if graph.get("custom_obj_values"):
        raise InvalidInput("The program holds custom objects; only tensors are accepted.")
    for spec in signature.get("input_specs") or []:
        if not isinstance(spec, dict) or set(spec) - INPUT_SPECS:
            raise InvalidInput(f"The program has an input of a kind CLaaS does not run ({str(spec)[:80]}).")
    for spec in signature.get("output_specs") or []:
        if not isinstance(spec, dict) or set(spec) - OUTPUT_SPECS:
            raise InvalidInput(f"The program has an output of a kind CLaaS does not run ({str(spec)[:80]}).")
    users = [s["user_input"]["arg"] for s in signature.get("input_specs") or [] if "user_input" in s]
    outputs = [s["user_output"]["arg"] for s in signature.get("output_specs") or [] if "user_output" in s]
    if len(users) != 1 or "as_tensor" not in users[0] or len(outputs) != 1 or "as_tensor" not in outputs[0]:
        raise InvalidInput("The program must take one tensor (a batch of inputs) and return one tensor "
                           f"(a batch of class scores); {HOW_TO_EXPORT}.",
                           details={"inputs": len(users), "outputs": len(outputs)})
    values = graph.get("tensor_values") or {}
    x = values.get(users[0]["as_tensor"]["name"]) or {}
    y = values.get(outputs[0]["as_tensor"]["name"]) or {}
    x_sizes, y_sizes = x.get("sizes") or [], y.get("sizes") or []
    if not x_sizes or "as_expr" not in x_sizes[0] or len(y_sizes) != 2 or "as_expr" not in y_sizes[0]:
        raise InvalidInput(f"The program's batch size is fixed; {HOW_TO_EXPORT}, so that it takes any batch size.",
                           details={"input_sizes": str(x_sizes)[:120]})
    input_shape = _ints(x_sizes[1:])
    num_classes = _ints(y_sizes[1:])[0]
    if not input_shape or num_classes < 2 or x.get("dtype") != 7:
        raise InvalidInput("The program must take float32 inputs with at least one feature and return scores for "
                           "at least 2 classes.", details={"input_shape": input_shape, "num_classes": num_classes})
    return input_shape, num_classes


def _symbols(ranges: Any) -> set[str]:
    if not isinstance(ranges, dict):
        raise InvalidInput(NOT_A_PROGRAM, details={"reason": "no range constraints"})
    for name in ranges:
        if not SYMBOL_RE.fullmatch(name):
            raise InvalidInput("The program declares a size symbol CLaaS does not read.",
                               details={"symbol": str(name)[:40]})
    return set(ranges)


def _arg_check(arg: Any, target: str) -> None:
    if not isinstance(arg, dict) or len(arg) != 1 or next(iter(arg)) not in ARG_KINDS:
        kind = next(iter(arg)) if isinstance(arg, dict) and arg else type(arg).__name__
        raise InvalidInput(f"The program passes a {str(kind)[:40]} to {target[:80]}; only tensors, numbers and "
                           "sizes are accepted.", details={"operator": target[:80]})
    value = arg.get("as_string")
    if value is not None and (not isinstance(value, str) or len(value) > MAX_STRING):
        raise InvalidInput(f"The program passes a string of over {MAX_STRING} characters to {target[:80]}.")


def _exprs_check(value: Any, symbols: set[str]) -> None:
    """Every `expr_str` anywhere in the program must be an integer expression over the declared symbols."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            expr = item.get("expr_str")
            if expr is not None and not expr_safe(expr, symbols):
                raise InvalidInput("The program has a shape expression CLaaS does not accept.",
                                   details={"expression": str(expr)[:80]})
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def expr_safe(expr: Any, symbols: set[str]) -> bool:
    """Integers, the declared symbols (bare or quoted), arithmetic and a few sympy constructors; nothing else.

    sympy evaluates these strings as Python, so nothing outside this grammar ever reaches it.
    """
    if not isinstance(expr, str) or len(expr) > MAX_STRING:
        return False
    position = 0
    depth = 0
    while position < len(expr):
        match = EXPR_TOKEN_RE.match(expr, position)
        if match is None or match.end() == position:
            return expr[position:].strip() == ""
        literal, name, op = match.groups()
        if name is not None and name not in symbols and name not in EXPR_FUNCTIONS:
            return False
        if literal is not None and literal.startswith("'") and literal.strip("'") not in symbols:
            return False
        if op == "(":
            depth += 1
        elif op == ")":
            depth -= 1
            if depth < 0:
                return False
        position = match.end()
    return depth == 0


# --- building -------------------------------------------------------------------------------
def _tensor(meta: dict[str, Any], raw: bytes, *, is_param: bool, device: str) -> Any:
    dtype = getattr(torch, DTYPES[meta["dtype"]])
    sizes, strides = _sizes(meta), _ints(meta.get("strides"))
    if device == "meta":
        tensor = torch.empty_strided(sizes, strides, dtype=dtype, device="meta")
    else:
        flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        tensor = torch.as_strided(flat, sizes, strides, meta["storage_offset"]["as_int"]).clone()
    if is_param:
        return torch.nn.Parameter(tensor, requires_grad=bool(meta.get("requires_grad", True)))
    return tensor


def program_load(*, archive: ProgramArchive, device: str = "cpu") -> Any:
    """The ExportedProgram, built by torch's deserializer from the checked JSON and our own tensors.

    On the meta device no weight is allocated: that build is for counting activations and FLOPs.
    """
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    state_dict = {name: _tensor(meta, raw, is_param=True, device=device)
                  for name, (meta, raw) in archive.weights.items()}
    params = {s["parameter"]["parameter_name"] for s in archive.doc["graph_module"]["signature"]["input_specs"]
              if "parameter" in s}
    state_dict = {k: (v if k in params else v.detach()) for k, v in state_dict.items()}
    constants = {name: _tensor(meta, raw, is_param=False, device=device)
                 for name, (meta, raw) in archive.constants.items()}
    example = ((torch.zeros(2, *archive.input_shape, device=device),), {})
    try:
        serialized = _dict_to_dataclass(schema.ExportedProgram, json.loads(json.dumps(archive.doc)))
        program = ExportedProgramDeserializer().deserialize(serialized, state_dict, constants, example)
    except InvalidInput:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"The program could not be read: {reason}; {HOW_TO_EXPORT}.")
    _built_check(program)
    return program


def _built_check(program: Any) -> None:
    """The graph torch built must call only what the JSON named: aten operators and Python operators."""
    import operator

    for node in program.graph.nodes:
        if node.op == "call_function":
            target = node.target
            if isinstance(target, torch._ops.OpOverload):
                name = f"torch.ops.{target.namespace}.{target._schema.name.split('::')[-1]}.{target._overloadname}"
            elif getattr(target, "__module__", None) == "_operator" or target in vars(operator).values():
                name = f"_operator.{target.__name__}"
            else:
                name = repr(target)
            if not operator_allowed(name):
                raise InvalidInput(f"The program calls {name[:100]}, which is not an allowed computation operator.")
        elif node.op not in ("placeholder", "output", "get_attr"):
            raise InvalidInput(f"The program has a {node.op} step; only operator calls are accepted.")
