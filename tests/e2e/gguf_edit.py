"""gguf_edit.py - rewrites a GGUF v3 file with one boolean metadata key set, for
tests that need a variant of a real model (e.g. tokenizer.ggml.add_bos_token =
false, to get a model that adds no BOS token).

It walks the header exactly as the GGUF spec lays it out (magic, version, tensor
count, KV count, the KV pairs, the tensor infos), drops the key if present,
appends it with the new value, pads the header to the file's alignment and
copies the tensor data unchanged: tensor offsets are relative to the start of
the data section, so they stay valid.
"""
import struct

_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
T_UINT32, T_BOOL, T_STRING, T_ARRAY = 4, 7, 8, 9
DEFAULT_ALIGNMENT = 32


class _Reader:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, fmt):
        v = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return v[0]

    def string(self):
        n = self.take("Q")
        s = self.buf[self.pos:self.pos + n]
        self.pos += n
        return s.decode("utf-8")

    def skip_value(self, t):
        if t == T_STRING:
            n = self.take("Q")  # not `pos += take()`: take() moves pos first
            self.pos += n
        elif t == T_ARRAY:
            et, n = self.take("I"), self.take("Q")
            if et in _SCALAR_SIZE:
                self.pos += _SCALAR_SIZE[et] * n
            else:
                for _ in range(n):
                    self.skip_value(et)
        else:
            self.pos += _SCALAR_SIZE[t]


def _string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def set_bool_key(src, dst, key, value):
    """Writes dst: src with metadata key set to the bool value."""
    buf = open(src, "rb").read()
    r = _Reader(buf)
    if buf[:4] != b"GGUF":
        raise ValueError("%s: not a GGUF file" % src)
    r.pos = 4
    version, n_tensors, n_kv = r.take("I"), r.take("Q"), r.take("Q")
    if version != 3:
        raise ValueError("%s: GGUF version %d, expected 3" % (src, version))
    kvs = []
    alignment = DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        start = r.pos
        k = r.string()
        t = r.take("I")
        vstart = r.pos
        r.skip_value(t)
        if k == "general.alignment" and t == T_UINT32:
            alignment = struct.unpack_from("<I", buf, vstart)[0]
        if k != key:
            kvs.append(buf[start:r.pos])
    infos_start = r.pos
    for _ in range(n_tensors):
        r.string()
        n_dims = r.take("I")
        r.pos += 8 * n_dims + 4 + 8  # dims, type, offset
    infos = buf[infos_start:r.pos]
    data_start = (r.pos + alignment - 1) // alignment * alignment

    kvs.append(_string(key) + struct.pack("<I?", T_BOOL, bool(value)))
    head = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs)) + b"".join(kvs) + infos
    head += b"\0" * (-len(head) % alignment)
    with open(dst, "wb") as f:
        f.write(head)
        f.write(buf[data_start:])


def tensor_span(path, name):
    """Where tensor `name`'s data lies in the GGUF file at path: returns
    (absolute byte offset, ggml type id, [ne0, ne1, ...]).  Raises KeyError
    when there is no such tensor."""
    buf = open(path, "rb").read()
    if buf[:4] != b"GGUF":
        raise ValueError("%s: not a GGUF file" % path)
    r = _Reader(buf)
    r.pos = 4
    version, n_tensors, n_kv = r.take("I"), r.take("Q"), r.take("Q")
    if version != 3:
        raise ValueError("%s: GGUF version %d, expected 3" % (path, version))
    alignment = DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        k = r.string()
        t = r.take("I")
        vstart = r.pos
        r.skip_value(t)
        if k == "general.alignment" and t == T_UINT32:
            alignment = struct.unpack_from("<I", buf, vstart)[0]
    found = None
    for _ in range(n_tensors):
        tname = r.string()
        n_dims = r.take("I")
        ne = [r.take("Q") for _ in range(n_dims)]
        ttype, rel = r.take("I"), r.take("Q")
        if tname == name:
            found = (rel, ttype, ne)
    if found is None:
        raise KeyError("%s: no tensor %r" % (path, name))
    data_start = (r.pos + alignment - 1) // alignment * alignment
    return data_start + found[0], found[1], found[2]
