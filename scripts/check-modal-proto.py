#!/usr/bin/env python3
"""Checks adapters/proto/modal/api.proto against the API descriptor a `modal` wheel publishes.

Our proto is a hand-trimmed subset of `modal_proto/api.proto`; this compares every package,
message, field (number, type, label, proto3 `optional`), enum value and RPC (request,
response, streaming) it declares with the serialized FileDescriptorProto in the wheel's
`modal_proto/api_pb2.py`, and exits non-zero on any difference. Fields and RPCs we leave out are
fine (protobuf skips unknown fields); anything we declare must match exactly.

Usage (needs the `protobuf` Python package, nothing else):
    python3 -m venv /tmp/v && /tmp/v/bin/pip install protobuf
    /tmp/v/bin/pip download --no-deps modal==1.6.4 -d /tmp/modal-wheel
    /tmp/v/bin/python scripts/check-modal-proto.py /tmp/modal-wheel/modal-1.6.4-py3-none-any.whl

The argument may also be an unpacked wheel (a directory containing `modal_proto/`). With
`--dump NAME...` it prints the published definitions of those messages, enums or the service
instead (e.g. `--dump Sandbox SandboxCreateRequest ModalClient`), to extend our subset.
"""

import argparse
import os
import re
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUR_PROTO = os.path.join(HERE, "..", "adapters", "proto", "modal", "api.proto")

SCALARS = {
    "double", "float", "int64", "uint64", "int32", "fixed64", "fixed32", "bool", "string",
    "bytes", "uint32", "sfixed32", "sfixed64", "sint32", "sint64",
}


def load_descriptor(path):
    """The FileDescriptorProto of modal_proto/api.proto in a wheel or an unpacked wheel."""
    if os.path.isfile(path):
        tmp = tempfile.mkdtemp(prefix="modal-proto-")
        with zipfile.ZipFile(path) as wheel:
            for name in wheel.namelist():
                if name.startswith("modal_proto/"):
                    wheel.extract(name, tmp)
        path = tmp
    sys.path.insert(0, path)
    from google.protobuf import descriptor_pb2
    from modal_proto import api_pb2

    fdp = descriptor_pb2.FileDescriptorProto()
    api_pb2.DESCRIPTOR.CopyToProto(fdp)
    return fdp


def published_index(fdp):
    """Maps `Msg`, `Msg.Nested`, `Enum` to their descriptor protos, plus the services."""
    from google.protobuf.descriptor_pb2 import FieldDescriptorProto as F

    types = {v: k[len("TYPE_"):].lower() for k, v in F.Type.items()}
    messages, enums = {}, {}

    def walk(msg, prefix):
        name = prefix + msg.name
        fields = {}
        for f in msg.field:
            if f.type_name:
                type_name = f.type_name
            else:
                type_name = types[f.type]
            if f.label == F.LABEL_REPEATED:
                label = "repeated"
            elif f.proto3_optional:
                label = "optional"
            else:
                label = ""
            fields[f.name] = (f.number, type_name, label)
        messages[name] = fields
        for e in msg.enum_type:
            enums[name + "." + e.name] = {v.name: v.number for v in e.value}
        for n in msg.nested_type:
            walk(n, name + ".")

    for m in fdp.message_type:
        walk(m, "")
    for e in fdp.enum_type:
        enums[e.name] = {v.name: v.number for v in e.value}
    services = {
        s.name: {
            m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming)
            for m in s.method
        }
        for s in fdp.service
    }
    return messages, enums, services


def parse_ours(text, package):
    """Parses the small proto3 subset our file uses."""
    text = re.sub(r"//[^\n]*", "", text)
    tokens = re.findall(r"[A-Za-z_][A-Za-z0-9_.]*|\d+|[{}();=]", text)
    messages, enums, services = {}, {}, {}
    declared_package = None
    pos = 0

    def expect(tok):
        nonlocal pos
        if tokens[pos] != tok:
            raise SystemExit(f"parse error: expected {tok!r}, got {tokens[pos]!r}")
        pos += 1

    def resolve(type_name, scope):
        if type_name in SCALARS:
            return type_name
        # Innermost scope first, as protoc resolves names.
        parts = scope.split(".") if scope else []
        for i in range(len(parts), -1, -1):
            candidate = ".".join(parts[:i] + [type_name])
            if candidate in all_names:
                return f".{package}.{candidate}"
        raise SystemExit(f"unknown type {type_name} in {scope}")

    pending_fields = []  # (message, name, number, raw type, label, scope)
    all_names = set()

    def parse_enum(name):
        nonlocal pos
        expect("{")
        values = {}
        while tokens[pos] != "}":
            value = tokens[pos]
            pos += 1
            expect("=")
            values[value] = int(tokens[pos])
            pos += 1
            expect(";")
        expect("}")
        enums[name] = values
        all_names.add(name)

    def parse_message(name):
        nonlocal pos
        expect("{")
        messages[name] = {}
        all_names.add(name)
        while tokens[pos] != "}":
            tok = tokens[pos]
            if tok == "message":
                pos += 1
                nested = tokens[pos]
                pos += 1
                parse_message(name + "." + nested)
            elif tok == "enum":
                pos += 1
                nested = tokens[pos]
                pos += 1
                parse_enum(name + "." + nested)
            else:
                label = ""
                if tok in ("repeated", "optional"):
                    label = tok
                    pos += 1
                type_name = tokens[pos]
                field = tokens[pos + 1]
                pos += 2
                expect("=")
                number = int(tokens[pos])
                pos += 1
                expect(";")
                pending_fields.append((name, field, number, type_name, label))
        expect("}")

    def parse_service(name):
        nonlocal pos
        expect("{")
        methods = {}
        while tokens[pos] != "}":
            expect("rpc")
            method = tokens[pos]
            pos += 1
            expect("(")
            client_streaming = tokens[pos] == "stream"
            if client_streaming:
                pos += 1
            request = tokens[pos]
            pos += 1
            expect(")")
            expect("returns")
            expect("(")
            server_streaming = tokens[pos] == "stream"
            if server_streaming:
                pos += 1
            response = tokens[pos]
            pos += 1
            expect(")")
            expect(";")
            methods[method] = (request, response, client_streaming, server_streaming)
        expect("}")
        services[name] = methods

    while pos < len(tokens):
        tok = tokens[pos]
        pos += 1
        if tok == "syntax":
            expect("=")
            pos += 1  # the string literal was dropped by the tokenizer; skip "proto3"
            expect(";")
        elif tok == "package":
            declared_package = tokens[pos]
            pos += 1
            expect(";")
        elif tok == "message":
            name = tokens[pos]
            pos += 1
            parse_message(name)
        elif tok == "enum":
            name = tokens[pos]
            pos += 1
            parse_enum(name)
        elif tok == "service":
            name = tokens[pos]
            pos += 1
            parse_service(name)
        else:
            raise SystemExit(f"parse error near {tok!r}")

    for message, field, number, type_name, label in pending_fields:
        messages[message][field] = (number, resolve(type_name, message), label)
    for methods in services.values():
        for method, (req, resp, cs, ss) in methods.items():
            methods[method] = (resolve(req, ""), resolve(resp, ""), cs, ss)
    return declared_package, messages, enums, services


def dump(fdp, names):
    from google.protobuf import text_format

    wanted = set(names)
    for m in fdp.message_type:
        if m.name in wanted:
            print(text_format.MessageToString(m))
    for e in fdp.enum_type:
        if e.name in wanted:
            print(text_format.MessageToString(e))
    for s in fdp.service:
        if s.name in wanted:
            print(text_format.MessageToString(s))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("wheel", help="modal wheel (.whl) or an unpacked wheel directory")
    parser.add_argument("--proto", default=OUR_PROTO, help="our trimmed proto (default: %(default)s)")
    parser.add_argument("--dump", nargs="+", metavar="NAME", help="print published definitions instead")
    args = parser.parse_args()

    fdp = load_descriptor(args.wheel)
    if args.dump:
        dump(fdp, args.dump)
        return 0
    pub_messages, pub_enums, pub_services = published_index(fdp)
    with open(args.proto, encoding="utf-8") as f:
        package, messages, enums, services = parse_ours(f.read(), fdp.package)

    problems = []
    if package != fdp.package:
        problems.append(f"package {package!r} != published {fdp.package!r}")
    for name, fields in messages.items():
        if name not in pub_messages:
            problems.append(f"message {name} is not published")
            continue
        for field, ours in fields.items():
            published = pub_messages[name].get(field)
            if published != ours:
                problems.append(f"{name}.{field}: ours {ours}, published {published}")
    for name, values in enums.items():
        if name not in pub_enums:
            problems.append(f"enum {name} is not published")
            continue
        for value, number in values.items():
            published = pub_enums[name].get(value)
            if published != number:
                problems.append(f"{name}.{value}: ours {number}, published {published}")
    for name, methods in services.items():
        if name not in pub_services:
            problems.append(f"service {name} is not published")
            continue
        for method, ours in methods.items():
            published = pub_services[name].get(method)
            if published != ours:
                problems.append(f"rpc {name}.{method}: ours {ours}, published {published}")

    checked = sum(len(f) for f in messages.values())
    if problems:
        for p in problems:
            print("MISMATCH:", p)
        return 1
    print(
        f"ok: package {package}, {len(messages)} messages ({checked} fields), {len(enums)} enums, "
        f"{sum(len(m) for m in services.values())} rpcs match {fdp.name}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
