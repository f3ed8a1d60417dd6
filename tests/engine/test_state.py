from collections import OrderedDict, namedtuple

import torch

from ignite_lstm.engine.state import detach_state, map_state

Pair = namedtuple("Pair", ["h", "c"])


def _double(t):
    return t * 2


def test_map_state_none_is_none():
    assert map_state(_double, None) is None
    assert detach_state(None) is None


def test_map_state_tensor():
    t = torch.arange(3.0)
    assert torch.equal(map_state(_double, t), torch.tensor([0.0, 2.0, 4.0]))


def test_map_state_tuple_and_list_keep_their_type():
    a, b = torch.ones(2), torch.full((2,), 3.0)
    out = map_state(_double, (a, b))
    assert type(out) is tuple and len(out) == 2
    assert torch.equal(out[0], 2 * a) and torch.equal(out[1], 2 * b)
    out = map_state(_double, [a, b])
    assert type(out) is list and len(out) == 2
    assert torch.equal(out[0], 2 * a) and torch.equal(out[1], 2 * b)


def test_map_state_namedtuple_keeps_type_and_fields():
    out = map_state(_double, Pair(h=torch.ones(2), c=torch.zeros(2)))
    assert type(out) is Pair
    assert torch.equal(out.h, torch.full((2,), 2.0)) and torch.equal(out.c, torch.zeros(2))


def test_map_state_dict_keeps_type_and_keys():
    out = map_state(_double, {"h": torch.ones(1), "c": torch.ones(1)})
    assert type(out) is dict and list(out) == ["h", "c"]
    assert torch.equal(out["h"], torch.full((1,), 2.0))
    ordered = map_state(_double, OrderedDict([("b", torch.ones(1)), ("a", torch.zeros(1))]))
    assert type(ordered) is OrderedDict and list(ordered) == ["b", "a"]


def test_map_state_nested_and_non_tensor_leaves():
    state = {"rnn": [Pair(torch.ones(1), torch.ones(1)), (torch.ones(1), None)], "step": 7, "name": "x"}
    out = map_state(_double, state)
    assert type(out["rnn"]) is list and type(out["rnn"][0]) is Pair and type(out["rnn"][1]) is tuple
    assert torch.equal(out["rnn"][0].c, torch.full((1,), 2.0))
    assert torch.equal(out["rnn"][1][0], torch.full((1,), 2.0))
    assert out["rnn"][1][1] is None
    assert out["step"] == 7 and out["name"] == "x"


def test_detach_state_cuts_the_graph_and_keeps_values():
    w = torch.tensor([1.5, -2.0], requires_grad=True)
    state = {"lstm": Pair(w * 2, w * 3), "gru": [w.exp()]}
    detached = detach_state(state)
    pairs = [
        (state["lstm"].h, detached["lstm"].h),
        (state["lstm"].c, detached["lstm"].c),
        (state["gru"][0], detached["gru"][0]),
    ]
    for orig, new in pairs:
        assert orig.requires_grad and not new.requires_grad and new.grad_fn is None
        assert torch.equal(orig, new)
        assert new.data_ptr() == orig.data_ptr()  # a view of the same values, no copy
    assert type(detached["lstm"]) is Pair and type(detached["gru"]) is list


def test_detached_state_passes_no_gradient():
    # Gradient reaches w only through the path that was not detached.
    w = torch.tensor([1.5, -2.0], requires_grad=True)
    h, c = detach_state((w * 2, w * 3))
    (h * w + c * w).sum().backward()  # d/dw of (2w_d * w + 3w_d * w) with w_d constant: 5 w_d
    assert torch.equal(w.grad, 5 * w.detach())
