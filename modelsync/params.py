"""Param: one trainable array, compared by identity, whose storage may move between devices."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from .devices import Device, device_of, dtype_name, is_array, nbytes_of, on_device
from .errors import ArgumentError, ArgumentTypeError, DeviceMismatchError
from .transfers import copy_to
from .watch import changed

#: How many Params are wrap-linked now (`set_link`): while none is, an update has no twin to
#: pull from or hand over to, and `open_for_update` skips looking at a thousand Params.
linked = 0


class Param:
    """One trainable array.

    Equality and hash are by identity (a Param is not an array). ``.value`` reads the
    storage (bringing a wrap-mode twin up to date first), ``.grad`` holds the gradient on
    the Param's device, and ``assign`` writes new values in place from any device.
    """

    __slots__ = ("_data", "_grad", "_device", "_readonly", "_link", "_store", "_owned",
                 "_gview", "name", "origin", "__weakref__")

    def __init__(self, value: Any, *, name: str | None = None) -> None:
        owned = not is_array(value)  # (numbers turned into an array here: no one else holds it)
        if owned:
            value = np.asarray(value)
        elif isinstance(value, np.ndarray) and not value.flags.writeable:
            value = value.copy()  # a Param is written in place: it must own writable storage
            owned = True
        self.check_dtype(value, name)
        self._data = value
        self._grad: Any = None
        self._device: Device = device_of(value)
        self._readonly: Any = None  # read-only host view handed out while wrapped
        self._link: Any = None  # coherence link to a wrap-mode twin
        self._store: Any = None  # the flat.FlatStore whose buffer this Param views, if any
        #: Whether the library allocated the storage (no user array aliases it): optimizers
        #: may then lay it out flat on their own (`modelsync.packing`).
        self._owned = owned
        self._gview: Any = None  # this Param's view of its store's gradient buffer, if made
        self.name = name
        #: Identity of the Param this one was made as: kept by copies, moves and save/load.
        self.origin: str = uuid.uuid4().hex

    def check_dtype(self, value: Any, name: str | None) -> None:
        """ArgumentTypeError unless ``value``'s dtype is one this kind of array may hold (a
        Param: floating; a Buffer, `modelsync.buffers`, also counters)."""
        if not _is_floating(value):
            raise ArgumentTypeError(
                f"Param value has dtype {dtype_name(value.dtype)}; expected a floating dtype "
                "(float16, float32 or float64)")

    # -- reading -----------------------------------------------------------------------
    @property
    def value(self) -> Any:
        """The current values (a wrap-mode twin that is newer is pulled in first)."""
        if self._link is not None:
            self._link.before_read(self)
            if self._readonly is not None:
                return self._readonly
        return self._data

    @value.setter
    def value(self, _: Any) -> None:
        raise ArgumentTypeError(
            "Param.value cannot be rebound; write new values in place with p.assign(array)")

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise ArgumentTypeError(
            "a Param is not an array (it is compared by identity); use p.value for its values")

    def __getstate__(self) -> dict[str, Any]:
        """Pickling keeps the values, gradient, name and origin: not a wrap-mode link or a
        flat store, which belong to this process's objects."""
        return {"data": self.value, "grad": self._grad, "name": self.name, "origin": self.origin}

    def __setstate__(self, state: dict[str, Any]) -> None:
        data = state["data"]  # (a wrapped original's values arrive read-only: own a copy)
        writable = not isinstance(data, np.ndarray) or data.flags.writeable
        self._data = data if writable else data.copy()
        self._grad = state["grad"]
        self._device = device_of(self._data)
        self._readonly = None
        self._link = None
        self._store = None
        self._owned = True  # (unpickled: storage no one else holds)
        self._gview = None
        self.name = state["name"]
        self.origin = state["origin"]

    @property
    def device(self) -> Device:
        return self._device

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)

    @property
    def dtype(self) -> Any:
        return self._data.dtype

    @property
    def size(self) -> int:
        return int(self._data.size)

    @property
    def nbytes(self) -> int:
        return nbytes_of(self._data)

    # -- gradient ----------------------------------------------------------------------
    @property
    def grad(self) -> Any:
        """The accumulated gradient (None until a backward pass), on the Param's device."""
        return self._grad

    @grad.setter
    def grad(self, value: Any) -> None:
        data = self._data
        if value is not None and not (  # (fast path: a host array that fits needs no more)
                type(value) is np.ndarray and type(data) is np.ndarray
                and value.shape == data.shape and value.dtype == data.dtype):
            self._check_compatible("grad", value)
        view = self._gview
        if view is not None and (value is view) != (self._grad is view):
            self._store.grads_set += 1 if value is view else -1
        self._grad = value

    def accumulate_grad(self, delta: Any) -> None:
        """Add ``delta`` to ``.grad`` (creating it): what backward passes call. A delta of
        another shape, dtype or array type (a custom layer's bug) is refused, not broadcast.

        A Param of an intact flat store accumulates into its view of the store's gradient
        buffer (made at the first backward pass; ``zero_grad`` keeps it), so a flat optimizer
        step reads one buffer and gathers nothing."""
        data = self._data
        if (type(delta) is not type(data) or delta.shape != data.shape
                or delta.dtype != data.dtype):
            self._check_compatible("accumulate_grad", delta)
        view = self._gview
        if view is None:
            store = self._store
            if store is not None and not store.broken:
                store.ensure_grads()  # (gives each member its view)
                view = self._gview
        grad = self._grad
        if view is None:
            self._grad = delta if grad is None else grad + delta
        elif grad is view:
            view += delta  # (in place: the buffer stays)
        else:
            view[...] = delta if grad is None else grad + delta
            self._grad = view
            self._store.grads_set += 1

    # -- writing -----------------------------------------------------------------------
    def assign(self, array: Any) -> None:
        """Write ``array``'s values into this Param in place; from another device it is copied
        (and counted by track_transfers)."""
        if not is_array(array):
            try:
                numbers = np.asarray(array)
                if numbers.dtype.kind not in "biuf":  # None, strings, objects: not numbers
                    raise TypeError
                array = numbers.astype(dtype_name(self.dtype))
            except (TypeError, ValueError):
                raise ArgumentTypeError(
                    f"assign: {array!r} is a {type(array).__name__}, not numbers; expected an "
                    f"array of shape {self.shape} {dtype_name(self.dtype)}") from None
        self._check_compatible("assign", array, same_device=False)
        if device_of(array) != self._device:
            array = copy_to(array, self._device, reason="Param.assign")
        self.writable(overwrite=True)[...] = array

    def writable(self, *, overwrite: bool = False) -> Any:
        """The storage, ready for an in-place write through the API (optimizers, sync,
        load_into): in wrap mode this side is brought up to date and becomes the newer one.
        ``overwrite=True`` promises every value will be replaced, so no pull is needed."""
        if self._link is not None:
            self._link.before_write(self, overwrite=overwrite)
        return self._data

    def _check_compatible(self, what: str, array: Any, *, same_device: bool = True) -> None:
        if not is_array(array):
            raise ArgumentTypeError(
                f"{what}: expected an array of shape {self.shape} {dtype_name(self.dtype)}, "
                f"got {type(array).__name__}")
        if same_device and device_of(array) != self._device:
            raise DeviceMismatchError(
                f"{what}: array is on {device_of(array)} but the Param is on {self._device}; "
                f"move it first with ms.to_device(array, '{self._device}')")
        if tuple(array.shape) != self.shape:
            raise ArgumentError(
                f"{what}: array has shape {tuple(array.shape)}, expected the Param's shape "
                f"{self.shape}")
        if dtype_name(array.dtype) != dtype_name(self.dtype):
            raise ArgumentError(
                f"{what}: array has dtype {dtype_name(array.dtype)}, expected the Param's dtype "
                f"{dtype_name(self.dtype)}; cast it first")

    def __deepcopy__(self, memo: dict[int, Any]) -> Param:
        """``copy.deepcopy`` (of a model, e.g. a target network): a Param with its own copy of
        the current values and gradient, in no flat store and linked to nothing."""
        xp = self._device.xp
        with on_device(self._device):  # (CuPy copies onto the current GPU)
            data = self.value
            twin = type(self).in_store(data.copy() if hasattr(data, "copy") else xp.asarray(
                data, copy=True), self._device, name=self.name, origin=self.origin, store=None)
            if self._grad is not None:
                grad = self._grad
                twin._grad = grad.copy() if hasattr(grad, "copy") else xp.asarray(
                    grad, copy=True)
        memo[id(self)] = twin
        return twin

    @classmethod
    def owning(cls, value: Any, *, name: str | None = None) -> Param:
        """A Param that takes ``value`` over: its caller made the array and keeps no other
        reference to it (what the built-in layers' initialisers do), so an optimizer may lay
        it out flat on its own. ``Param(array)`` instead keeps aliasing the caller's array
        until ``ms.flatten`` is called."""
        p = cls(value, name=name)
        p._owned = True
        return p

    @property
    def owns_storage(self) -> bool:
        """Whether the library allocated this Param's storage (a layer's initialiser, a
        conversion, a load), so laying it out elsewhere breaks no alias the user holds."""
        return self._owned

    # -- the library's door: what coherence, flat storage and io use ------------------------
    # (Not user API: these skip the checks and the wrap-mode bookkeeping of the methods above.
    # No module outside this one touches a Param's private fields; it asks through these.)
    @classmethod
    def in_store(cls, data: Any, device: Device, *, name: str | None, origin: str,
                 store: Any) -> Param:
        """A Param over storage the library just laid out (a flat buffer's view, owned by
        ``store``, or None): skips the checks ``__init__`` makes of user input. Conversions
        make thousands of these."""
        p = cls.__new__(cls)
        p._data = data
        p._grad = None
        p._device = device
        p._readonly = None
        p._link = None
        p._store = store
        p._owned = True
        p._gview = None
        p.name = name
        p.origin = origin
        return p

    @classmethod
    def twins_in_store(cls, views: Sequence[Any], device: Device, like: Sequence[Param],
                       store: Any) -> list[Param]:
        """``in_store`` for a whole store at once: one new Param per view, with the name and
        origin of the Param of ``like`` at the same place. A conversion makes a thousand of
        these, so the slots are set in one loop here, not through a keyword call each."""
        new = object.__new__
        made = []
        append = made.append
        for data, twin in zip(views, like, strict=True):
            p = new(cls)
            p._data = data
            p._grad = None
            p._device = device
            p._readonly = None
            p._link = None
            p._store = store
            p._owned = True
            p._gview = None
            p.name = twin.name
            p.origin = twin.origin
            append(p)
        return made

    def storage(self) -> Any:
        """The storage as it is: no wrap-mode pull, no hand-over (what a move copies, what
        coherence pulls into and from, what a sync that already did the hand-over writes)."""
        return self._data

    @property
    def flat_store(self) -> Any:
        """The flat.FlatStore whose buffer this Param's storage views, or None."""
        return self._store

    @property
    def link(self) -> Any:
        """The coherence link to a wrap-mode twin, or None."""
        return self._link

    def set_link(self, link: Any) -> None:
        """Join (or, with None, leave) a wrap-mode link."""
        global linked
        linked += (link is not None) - (self._link is not None)
        self._link = link

    def set_storage(self, data: Any, *, readonly: Any = None) -> None:
        """Hold the same values through other storage of this device: coherence hands a
        wrapped original a writable view of its host array and reads out ``readonly`` (the
        array itself, made read-only so a raw write raises instead of being lost)."""
        self._data = data
        self._readonly = readonly

    def rehome(self, data: Any, grad: Any = None, *, store: Any = None) -> None:
        """Point this Param at new storage, possibly on another device (a move, a load onto
        a device), viewing ``store``'s buffer if given; the old storage is dropped and the
        flat store it was part of is broken, and the caches that hold this Param (the walks
        of the models it is in, with their sync plans and layouts; see watch.py) are told."""
        old = self._store
        if old is not None and old is not store:
            old.broken = True
        self._data = data
        self._grad = grad
        self._device = device_of(data)
        self._readonly = None
        self._store = store
        self._gview = None  # (a view of the new store's gradient buffer is made when asked)
        self._owned = True  # (the new storage is the library's)
        changed(self)

    def set_grad_view(self, view: Any) -> None:
        """Take ``view``, a slice of this Param's store's gradient buffer, as where backward
        passes accumulate from now on (`flat.FlatStore.ensure_grads`); the gradient held now
        is kept as it is."""
        self._gview = view

    def grad_into_view(self) -> None:
        """Copy the gradient held now (if any) into this Param's view of its store's gradient
        buffer and hold the view instead (``ms.flatten`` keeps gradients this way)."""
        view, grad = self._gview, self._grad
        if view is None or grad is None or grad is view:
            return
        view[...] = grad
        self._grad = view
        self._store.grads_set += 1

    _rehome = rehome  # (the name tests written before the door still call)

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return (f"Param({label}shape={self.shape}, dtype={dtype_name(self.dtype)}, "
                f"device={self.device})")

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    # --- optimizer's door ---
    # What `modelsync.optim` needs of a Param, for a thousand Params at a time: no module
    # outside this one reads a Param's fields.
    @staticmethod
    def grads_of(params: Sequence[Param]) -> list[Any]:
        """Each Param's ``.grad`` (None where it has none), in one pass: a flat optimizer
        step reads every member's gradient and a property call each would double its cost."""
        return [p._grad for p in params]

    @staticmethod
    def clear_grads(params: Sequence[Param]) -> None:
        """Set every ``.grad`` of ``params`` to None in one pass (``zero_grad``): a flat
        store's gradient buffer stays, and the next backward pass overwrites it."""
        for p in params:
            view = p._gview
            if view is not None and p._grad is view:
                p._store.grads_set -= 1
            p._grad = None

    @staticmethod
    def open_for_update(*runs: Sequence[Param]) -> None:
        """Ready every Param of ``runs`` for an in-place update of all of them, or raise and
        mark none: every wrap-mode twin that is newer is pulled first (a refused pull raises
        here), and only then is each linked Param marked as about to hold the newest values
        (``writable()`` for all of them, all or nothing)."""
        if not linked:
            return  # (no Param anywhere is wrap-linked: nothing to pull or hand over)
        found = [p for run in runs for p in run if p._link is not None]
        for p in found:
            p._link.before_read(p)
        for p in found:
            p._link.before_write(p, overwrite=True)  # (up to date: nothing left to pull)


def _is_floating(array: Any) -> bool:
    return dtype_name(array.dtype) in ("float16", "float32", "float64")
