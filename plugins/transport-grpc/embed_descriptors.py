"""Write a FileDescriptorSet (protoc --descriptor_set_out) as a C array, so
the grpc transport serves the descriptors of its services by reflection
(grpc_reflect.c). Run by meson at build time:

  embed_descriptors.py SET.desc OUT.c
"""
import sys


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, "rb") as f:
        data = f.read()
    lines = ["/* Generated at build time by embed_descriptors.py from %s: do not edit. */"
             % src.rsplit("/", 1)[-1],
             "#include <stddef.h>",
             "#include <stdint.h>",
             "",
             "extern const uint8_t gr_descriptor_set[];",
             "extern const size_t gr_descriptor_set_len;",
             "const uint8_t gr_descriptor_set[] = {"]
    for i in range(0, len(data), 16):
        lines.append("    " + ", ".join("0x%02x" % b for b in data[i:i + 16]) + ",")
    lines += ["};", "const size_t gr_descriptor_set_len = %d;" % len(data), ""]
    with open(dst, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
