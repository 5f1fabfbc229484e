import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor

from hefl.v1 import hefl_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_match_the_proto_sources():
    result = subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _filled(message_class):
    """A message with every scalar, repeated and nested field set to a non-default value."""
    message = message_class()
    for field in message.DESCRIPTOR.fields:
        repeated = field.is_repeated
        if field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
            target = getattr(message, field.name)
            sub = _filled(getattr(pb, field.message_type.name))
            (target.add() if repeated else target).CopyFrom(sub)
            continue
        value = {
            descriptor.FieldDescriptor.TYPE_STRING: "x",
            descriptor.FieldDescriptor.TYPE_BYTES: b"\x01\x02",
            descriptor.FieldDescriptor.TYPE_BOOL: True,
            descriptor.FieldDescriptor.TYPE_DOUBLE: 1.5,
            descriptor.FieldDescriptor.TYPE_ENUM: 1,
        }.get(field.type, 7)
        if repeated:
            getattr(message, field.name).append(value)
        elif (
            field.containing_oneof is None
            or message.WhichOneof(field.containing_oneof.name) is None
        ):
            setattr(message, field.name, value)
    return message


@pytest.mark.parametrize("name", sorted(pb.DESCRIPTOR.message_types_by_name))
def test_every_wire_type_round_trips(name):
    message = _filled(getattr(pb, name))
    again = getattr(pb, name)()
    again.ParseFromString(message.SerializeToString())
    assert again == message
    assert again.ByteSize() > 0 or not message.DESCRIPTOR.fields
