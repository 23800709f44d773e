"""probinf.save / probinf.load: exact round trips without pickle, no code named by a file is
trusted unless asked, one clear error for every unreadable file, and what cannot be saved is
named with nothing written."""

import dataclasses
import enum
import functools
import hashlib
import json
import math
import pickle
import struct
from collections import OrderedDict
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import probinf
from probinf.io import SaveFileError, load_legacy_pickle

# The file layout documented in probinf/io.py, written out independently here.
MAGIC = b"\x89PROBINF\r\n\x1a\n"


def _top_level_log_density(z):
    return -0.5 * jnp.sum(z**2)


class TrainState(NamedTuple):
    """The shape of the training engine's state: params, optax state, step, key."""

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array


class Colour(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Config:
    name: str
    sizes: tuple


class Slotted:
    __slots__ = ("value", "__hidden")

    def __init__(self, value):
        self.value = value
        self.__hidden = value * 2


def assert_identical(a, b, where="obj"):
    """Same types, same containers in the same order, same bits and dtypes in every array."""
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        assert jax.random.key_impl(a) == jax.random.key_impl(b), where
        assert_identical(jax.random.key_data(a), jax.random.key_data(b), where)
    elif isinstance(a, (jax.Array, np.ndarray, np.generic)):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert getattr(a, "weak_type", False) == getattr(b, "weak_type", False), where
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a.hex() == b.hex(), where  # bit for bit, -0.0 and nan included
    elif isinstance(a, eqx.Module) or dataclasses.is_dataclass(a):
        assert_identical(dict(vars(a)), dict(vars(b)), where)
    else:
        assert a is b or a == b, f"{where}: {a!r} vs {b!r}"


def _write_frame(path, tree, arrays=(), data=b"", version=1):
    """A file with a valid frame and checksum around a header of our choosing."""
    header = json.dumps({"format": "probinf.save", "version": version, "class": "builtins:dict",
                         "tree": tree, "arrays": list(arrays), "data_bytes": len(data)}).encode()
    body = MAGIC + struct.pack("<IQ", version, len(header)) + header + data
    path.write_bytes(body + hashlib.sha256(body).digest())
    return path


def test_a_lambda_target_cannot_be_saved_and_the_message_says_what_and_why(tmp_path):
    path = tmp_path / "target.pkl"
    target = probinf.from_logdensity(lambda z: -0.5 * jnp.sum(z**2), 2)
    with pytest.raises(TypeError, match=r"`obj` cannot be saved: obj\.log_density_fn is <function "
                                        r".*<lambda>.*saved by reference.*define it with `def`"):
        probinf.save(path, target)
    assert not path.exists()  # no half-written file
    with pytest.raises(TypeError, match=r"obj\['model'\]\['fn'\] is <function .*<locals>"):
        probinf.save(path, {"model": {"fn": lambda: None}})
    assert not path.exists()
    # The same target with a top-level function is saved; loading it names that function
    # and loads once its module is trusted.
    saved = probinf.from_logdensity(_top_level_log_density, 2, init_position=jnp.ones(2))
    probinf.save(path, saved)
    with pytest.raises(SaveFileError, match=rf"obj\.log_density_fn is the function "
                                            rf"'{__name__}:_top_level_log_density'.*trusted_modules"):
        probinf.load(path)
    loaded = probinf.load(path, trusted_modules=(__name__,))
    assert loaded.log_density_fn is _top_level_log_density
    assert float(loaded.log_density(jnp.ones(2))) == -1.0
    assert_identical(loaded, saved)


def test_every_kind_of_value_round_trips_bit_for_bit(tmp_path):
    obj = {
        "none": None, "flags": (True, False), "big": 2**80, "negative": -3, "text": "ü\n",
        "floats": [0.1, -0.0, math.inf, -math.inf, math.nan, 5e-324], "complex": 1.5 - 2j,
        "bytes": b"\x00\xff", "set": {1, 2}, "frozen": frozenset({"a"}), 3: "int key",
        ("a", 1): "tuple key", "nested": [{"deep": ((),)}],
        "f32": jax.random.normal(jax.random.key(0), (2, 3)),
        "int8": jnp.arange(-2, 2, dtype=jnp.int8), "bool": jnp.array([True, False]),
        "bf16": jnp.linspace(0, 1, 5, dtype=jnp.bfloat16), "empty": jnp.zeros((0, 3)),
        "weak": jnp.asarray(0.5), "uint32": jnp.asarray([2**32 - 1], jnp.uint32),
        "np64": np.random.default_rng(0).normal(size=3), "np_c128": np.array([1 + 1j, -2j]),
        "np_fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "np_float": np.float64(2.5), "np_int": np.int16(-7), "np_bool": np.bool_(True),
        "np_str": np.array(["ab", "c"]),
        "key": jax.random.key(3), "rbg_keys": jax.random.split(jax.random.key(4, impl="rbg"), 2),
        "raw_key": jax.random.PRNGKey(5), "dtype": np.dtype("float32"),
        "class": probinf.MeanFieldGaussian, "scalar_types": [float, np.float32, jnp.bfloat16, jnp.int8],
        "functions": [jax.nn.relu, jnp.tanh, jax.nn.gelu, probinf.fit],
        "method": probinf.MeanFieldGaussian.init(2).log_prob,  # an equinox Module, saved as one
    }
    shared = jnp.arange(3.0)
    obj["shared"] = [shared, shared]
    path = tmp_path / "everything.bin"
    probinf.save(path, obj)
    loaded = probinf.load(path)
    assert_identical(loaded, obj)
    assert math.isnan(loaded["floats"][4]) and math.copysign(1.0, loaded["floats"][1]) == -1.0
    assert loaded["set"] == {1, 2} and loaded["frozen"] == frozenset({"a"})
    assert loaded["functions"][0] is jax.nn.relu and loaded["functions"][3] is probinf.fit
    assert loaded["shared"][0] is loaded["shared"][1]  # an array held twice is stored once
    # A weakly typed scalar still defers to the other operand's dtype.
    assert (loaded["weak"] * jnp.ones(2, jnp.bfloat16)).dtype == jnp.bfloat16
    assert np.array_equal(jax.random.normal(loaded["key"], (3,)), jax.random.normal(obj["key"], (3,)))


def test_the_file_follows_the_documented_layout(tmp_path):
    family = probinf.MeanFieldGaussian(jnp.array([1.0, -2.0]), jnp.array([0.5, 0.25]))
    path = tmp_path / "family.any-suffix"
    probinf.save(path, family)
    blob = path.read_bytes()
    assert blob[:12] == MAGIC
    version, header_length = struct.unpack_from("<IQ", blob, 12)
    header = json.loads(blob[24:24 + header_length])
    assert version == header["version"] == 1
    assert header["class"] == "probinf.families:MeanFieldGaussian"
    assert len(blob) == 24 + header_length + header["data_bytes"] + 32
    assert hashlib.sha256(blob[:-32]).digest() == blob[-32:]
    loc = header["arrays"][header["tree"]["state"]["loc"]["array"]]
    start = 24 + header_length + loc["offset"]
    assert blob[start:start + loc["nbytes"]] == np.array([1.0, -2.0], np.float32).tobytes()


def test_a_training_state_with_optax_and_an_mlp_resumes_bit_exactly(tmp_path):
    model = eqx.nn.MLP(3, 2, 8, 2, key=jax.random.key(0))
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    x, y = jax.random.normal(jax.random.key(1), (16, 3)), jax.random.normal(jax.random.key(2), (16, 2))

    @eqx.filter_jit
    def step(state):
        def loss(params):
            return jnp.mean((jax.vmap(params)(x) - y) ** 2)

        grads = eqx.filter_grad(loss)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, eqx.filter(state.params, eqx.is_array))
        key, _ = jax.random.split(state.key)
        return TrainState(eqx.apply_updates(state.params, updates), opt_state, state.step + 1, key)

    state = step(TrainState(model, optimizer.init(eqx.filter(model, eqx.is_array)),
                            jnp.asarray(0, jnp.int32), jax.random.key(3)))
    path = tmp_path / "checkpoint"
    probinf.save(path, state)
    loaded = probinf.load(path, trusted_modules=(__name__,))
    assert_identical(loaded, state)
    assert loaded.params.activation is jax.nn.relu
    assert_identical(step(loaded), step(state))  # the resumed run continues bit for bit
    # Without the user's NamedTuple, optax states and equinox modules need no trust.
    probinf.save(path, tuple(state))
    assert_identical(probinf.load(path), tuple(state))


def test_64_bit_arrays_round_trip_under_x64_and_are_refused_without_it(tmp_path):
    path = tmp_path / "x64"
    with jax.enable_x64(True):
        obj = {"f64": jnp.asarray([0.1, 1 / 3]), "i64": jnp.asarray([2**40]), "c128": jnp.asarray([1j])}
        assert obj["f64"].dtype == jnp.float64
        probinf.save(path, obj)
        assert_identical(probinf.load(path), obj)
    with jax.enable_x64(False), pytest.raises(SaveFileError, match=r"float64.*jax_enable_x64"):
        probinf.load(path)


def test_a_users_own_classes_load_only_when_their_module_is_trusted(tmp_path):
    path = tmp_path / "user.bin"
    obj = [Colour.RED, Config("c", (1, 2)), Slotted(3.0), TrainState(None, (), jnp.asarray(1), None)]
    probinf.save(path, obj)
    with pytest.raises(SaveFileError, match=rf"obj\[0\] is the class '{__name__}:Colour'"):
        probinf.load(path)
    loaded = probinf.load(path, trusted_modules=[__name__])
    assert loaded[0] is Colour.RED and loaded[1] == obj[1]
    assert (loaded[2].value, loaded[2]._Slotted__hidden) == (3.0, 6.0)
    assert_identical(loaded[3], obj[3])
    with pytest.raises(TypeError, match="trusted_modules"):
        probinf.load(path, trusted_modules=__name__)


def test_what_cannot_be_saved_is_named_and_an_existing_file_is_kept(tmp_path):
    path = tmp_path / "kept"
    probinf.save(path, {"ok": jnp.ones(2)})
    before = path.read_bytes()

    class Local:
        pass

    cycle = []
    cycle.append(cycle)
    cases = [
        ({"f": functools.partial(_top_level_log_density)}, r"obj\['f'\] is functools\.partial"),
        ({"m": json.JSONEncoder().encode}, r"obj\['m'\] is <bound method.*a bound method"),
        ([1, Local()], r"obj\[1\] is .*Local.*cannot be found by its module and name"),
        (cycle, r"obj\[0\] is \[\[\.\.\.\]\], which contains itself"),
        ({"a": np.array([1, "x"], dtype=object)}, r"obj\['a'\] is dtype\('O'\).*dtype"),
        ({"od": OrderedDict(a=1)}, r"obj\['od'\] is OrderedDict.*"),
    ]
    for obj, message in cases:
        with pytest.raises(TypeError, match=message):
            probinf.save(path, obj)
    with pytest.raises(TypeError, match=r"obj is .*Tracer.*outside jit"):
        jax.jit(lambda x: probinf.save(path, x))(1.0)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]  # no temporary left behind


def _unreadable_files(tmp_path):
    good = tmp_path / "good"
    probinf.save(good, {"w": jnp.arange(64.0), "name": "x"})
    blob = good.read_bytes()
    data_byte = len(blob) - 40  # inside the array data
    newer = MAGIC + struct.pack("<IQ", 2, 2) + b"{}"
    yield "empty", b"", "the file is empty"
    yield "random", bytes(np.random.default_rng(0).integers(0, 256, 100, dtype=np.uint8)), \
        "not a file written by probinf.save"
    yield "text", b"loc,scale\n1.0,2.0\n", "not a file written by probinf.save.*looks like a text file"
    yield "signature", MAGIC[:5], "truncated"
    yield "half", blob[: len(blob) // 2], "truncated"
    yield "no_checksum", blob[:-32], "truncated"
    yield "flipped", blob[:data_byte] + bytes([blob[data_byte] ^ 1]) + blob[data_byte + 1:], "checksum"
    yield "appended", blob + b"\n", "unexpected bytes after its end"
    yield "newer", newer + hashlib.sha256(newer).digest(), "format version 2 by a newer probinf.*upgrade"
    yield "not_json", _bad_header(b"{not json"), "header is not valid JSON"
    yield "no_fields", _bad_header(b'{"format": "probinf.save"}'), "lacks the fields"


def _bad_header(header):
    body = MAGIC + struct.pack("<IQ", 1, len(header)) + header
    return body + hashlib.sha256(body).digest()


def test_every_unreadable_file_gives_one_error_naming_the_file_and_the_problem(tmp_path):
    for name, content, message in list(_unreadable_files(tmp_path)):
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(content)
        with pytest.raises(SaveFileError, match=rf"`path` '.*{name}\.pkl' cannot be loaded: .*{message}"):
            probinf.load(path)
    assert issubclass(SaveFileError, ValueError)


def test_a_header_describing_a_bad_object_is_refused(tmp_path):
    f32 = {"dtype": "<f4", "shape": [2], "offset": 0, "nbytes": 8}
    cases = [
        ({"$": "function", "ref": "os:system"}, (), "'os:system', from a module load does not trust"),
        ({"$": "function", "ref": "builtins:eval"}, (), "does not trust"),
        ({"$": "function", "ref": "probinf.io:load_legacy_pickle"}, (), "does not trust"),
        ({"$": "function", "ref": "probinf.target:np.load"}, (), "not defined in probinf.target"),
        ({"$": "object", "class": "probinf.target:from_logdensity", "state": {}}, (), "not a class"),
        ({"$": "object", "class": "probinf.families:Gone", "state": {}}, (), "no longer exists"),
        ({"$": "object", "class": "collections:OrderedDict", "state": {}}, (), "does not trust"),
        ({"$": "namedtuple", "class": "probinf.families:MeanFieldGaussian", "items": []}, (), "not a NamedTuple"),
        ({"$": "numpy", "array": 0}, [{**f32, "nbytes": 4}], "array entry"),
        ({"$": "numpy", "array": 0}, [{**f32, "dtype": "|O"}], "dtype '|O'"),
        ({"$": "numpy", "array": 1}, [f32], "array index 1"),
        ({"$": "pickle", "data": "..."}, (), "unknown kind 'pickle'"),
        ([1, 2], (), "unexpected"),
    ]
    for i, (tree, arrays, message) in enumerate(cases):
        path = _write_frame(tmp_path / f"crafted{i}", tree, arrays, data=bytes(8))
        with pytest.raises(SaveFileError, match=rf"'.*crafted{i}' cannot be loaded: .*{message}"):
            probinf.load(path)
    # The same frame around a good tree loads, so the refusals above are the trees'.
    path = _write_frame(tmp_path / "fine", {"$": "numpy", "array": 0}, [f32], data=np.ones(2, np.float32).tobytes())
    assert_identical(probinf.load(path), np.ones(2, np.float32))


def test_files_from_the_pickle_based_save_are_recognised_and_converted_explicitly(tmp_path):
    family = probinf.FullRankGaussian.init(2)
    path = tmp_path / "old.pkl"
    # What the earlier, pickle-based save wrote.
    tree = jax.tree_util.tree_map(lambda x: ("__jax__", np.asarray(x)) if isinstance(x, jax.Array) else x, family)
    path.write_bytes(pickle.dumps({"format": "probinf-pytree-v1", "version": "0.1.0", "tree": tree}))
    with pytest.raises(SaveFileError, match=r"old\.pkl.*pickle.*probinf\.io\.load_legacy_pickle\(path\).*trust"):
        probinf.load(path)
    converted = load_legacy_pickle(path)
    assert_identical(converted, family)
    probinf.save(path, converted)
    assert_identical(probinf.load(path), family)
    with pytest.raises(SaveFileError, match="not a readable pickle"):
        load_legacy_pickle(path)  # now a new-format file
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(SaveFileError, match="not one written by the pickle-based probinf.save"):
        load_legacy_pickle(path)
