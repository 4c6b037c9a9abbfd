#!/usr/bin/python3
"""Writes the crafted regression inputs of tests/fuzz/corpus/<target>/ (committed; rerun after changing this).

Each target gets the attacks its parser must refuse with a clear error, never a crash or a blow-up: nesting far
past its depth limit, numbers past double and int64 range, lone surrogates and invalid UTF-8, unterminated
tokens, and a valid input to start a search from. Names say what each input is.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


DEEP = 100000  # the attack that once overflowed the stack: far past every parser's limit

# -- completion bodies
valid = {"model": "tiny", "prompt": "Hello", "max_tokens": 4, "temperature": 0.7, "top_p": 0.9, "stop": ["\n"],
         "seed": 1, "stream": True, "stream_options": {"include_usage": True}}
write("completion", "valid.json", json.dumps(valid))
write("completion", "valid_ids.json", json.dumps({"prompt": [1, 2, 3], "max_tokens": 2}))
write("completion", "deep_array.json", '{"prompt": ' + "[" * DEEP + "]" * DEEP + "}")
write("completion", "deep_object.json", '{"prompt": "a", "x": ' + '{"a":' * DEEP + "1" + "}" * DEEP + "}")
write("completion", "deep_unclosed.json", "[" * DEEP)
write("completion", "number_1e400.json", '{"prompt": "a", "max_tokens": 1e400}')
write("completion", "temperature_1e400.json", '{"prompt": "a", "temperature": -1e400}')
write("completion", "int_past_uint64.json", '{"prompt": [99999999999999999999999], "max_tokens": 2}')
write("completion", "seed_past_int64.json", '{"prompt": "a", "seed": 18446744073709551615}')
write("completion", "max_tokens_int_min.json", '{"prompt": "a", "max_tokens": -9223372036854775808}')
write("completion", "token_id_negative.json", '{"prompt": [-1, -2147483649], "max_tokens": 2}')
write("completion", "lone_surrogate.json", '{"prompt": "\\ud800", "stop": ["\\udfff"]}')
write("completion", "invalid_utf8.json", b'{"prompt": "\xff\xfe\xc0\x80"}')
write("completion", "nul_inside.json", b'{"prompt": "a\x00b"}')
write("completion", "unterminated_string.json", '{"prompt": "abc')
write("completion", "many_stops.json", json.dumps({"prompt": "a", "stop": ["x"] * 10000}))
write("completion", "prompt_list_of_lists.json", json.dumps({"prompt": [[1, 2], [3]], "max_tokens": 1}))
write("completion", "empty.json", "")
write("completion", "not_object.json", "[1,2,3]")

# -- ds_config text
cfg = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
       "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "weight_decay": 0.1}},
       "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}},
       "fp16": {"enabled": "auto"}, "zero_optimization": {"stage": 2, "overlap_comm": True}}
write("config", "valid.json", json.dumps(cfg, indent=2))
write("config", "hjson_comments.json", '// c\n{"train_micro_batch_size_per_gpu": 2, /* x */ "steps_per_print": 1,}\n')
write("config", "deep_object.json", '{"a":' * DEEP + "1" + "}" * DEEP)
# Once quadratic: the duplicate-key check kept every open level's path.
write("config", "deep_long_keys.json", "".join('{"%s":' % ("k" * 64) for _ in range(5000)) + "1" + "}" * 5000)
write("config", "deep_array.json", '{"zero_optimization": {"stage": ' + "[" * DEEP + "]" * DEEP + "}}")
write("config", "batch_1e400.json", '{"train_batch_size": 1e400}')
write("config", "batch_past_int64.json", '{"train_batch_size": 99999999999999999999, "gradient_accumulation_steps": 1}')
write("config", "batch_product_overflow.json",
      '{"train_batch_size": 9223372036854775807, "train_micro_batch_size_per_gpu": 4611686018427387904, '
      '"gradient_accumulation_steps": 4611686018427387904}')
write("config", "lr_nan_string.json", '{"optimizer": {"type": "Adam", "params": {"lr": "nan"}}}')
write("config", "unterminated_comment.json", '{"train_batch_size": 8 /* never closed')
write("config", "duplicate_keys.json", '{"train_batch_size": 8, "train_batch_size": 16}')
write("config", "lone_surrogate_key.json", '{"\\ud800": 1}')
write("config", "invalid_utf8.json", b'{"train_batch_size": 8, "\xff": 1}')
write("config", "empty.json", "")

# -- safetensors files


def safetensors(header, data=b"", header_len=None):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if header_len is None else header_len) + h + data


ok_header = {"__metadata__": {"ds_model": "{}"}, "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
             "b": {"dtype": "BF16", "shape": [2], "data_offsets": [16, 20]}}
write("safetensors", "valid.safetensors", safetensors(ok_header, bytes(20)))
write("safetensors", "short.safetensors", b"\x01\x02")
write("safetensors", "header_len_huge.safetensors", safetensors({}, header_len=2 ** 63))
write("safetensors", "header_len_past_file.safetensors", safetensors({}, header_len=1000))
write("safetensors", "deep_header.safetensors", safetensors(("[" * DEEP + "]" * DEEP).encode()))
write("safetensors", "deep_metadata.safetensors",
      safetensors(('{"__metadata__": ' + '{"a":' * DEEP + '"x"' + "}" * DEEP + "}").encode()))
write("safetensors", "offsets_past_file.safetensors",
      safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 2 ** 64 - 1]}}, bytes(16)))
write("safetensors", "offsets_reversed.safetensors",
      safetensors({"w": {"dtype": "F32", "shape": [0], "data_offsets": [16, 0]}}, bytes(16)))
write("safetensors", "shape_product_overflow.safetensors",
      safetensors({"w": {"dtype": "F32", "shape": [2 ** 32, 2 ** 32, 16], "data_offsets": [0, 16]}}, bytes(16)))
write("safetensors", "shape_negative.safetensors",
      safetensors({"w": {"dtype": "F32", "shape": [-4, -1], "data_offsets": [0, 16]}}, bytes(16)))
write("safetensors", "shape_1e400.safetensors",
      safetensors(b'{"w": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}}', bytes(4)))
write("safetensors", "overlap.safetensors",
      safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)))
write("safetensors", "unknown_dtype.safetensors",
      safetensors({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}}, bytes(2)))
write("safetensors", "metadata_not_strings.safetensors", safetensors({"__metadata__": {"a": [1, 2]}}))
write("safetensors", "invalid_utf8_name.safetensors",
      safetensors(b'{"\xff\xfe": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', bytes(4)))

# -- checkpoint manifests
manifest = {"format": "dspeed-checkpoint", "version": 1, "tag": "global_step3", "global_steps": 3,
            "global_samples": 6, "optimizer_steps": 3,
            "model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "vocab_size": 50257, "block_size": 256},
            "zero_stage": 2, "world": 2,
            "units": [{"name": "wte", "offset": 0, "numel": 6, "padded_numel": 8}],
            "params": [{"name": "wte", "shape": [2, 3], "offset": 0}],
            "shards": [{"file": "rank_00000.safetensors", "rank": 0, "partition_numel": 4, "bytes": 100,
                        "crc32": 0},
                       {"file": "rank_00001.safetensors", "rank": 1, "partition_numel": 4, "bytes": 100,
                        "crc32": 0}]}
write("manifest", "valid.json", json.dumps(manifest, indent=1))


def variant(name, **changes):
    m = json.loads(json.dumps(manifest))
    for k, v in changes.items():
        m[k] = v
    write("manifest", name, json.dumps(m))


variant("world_zero.json", world=0)
variant("world_int_max.json", world=2 ** 31 - 1)
variant("world_past_int.json", world=2 ** 40)
variant("stage_9.json", zero_stage=9)
variant("units_empty.json", units=[])
variant("unit_numel_overflow.json", units=[{"name": "a", "offset": 0, "numel": 2 ** 63 - 1,
                                            "padded_numel": 2 ** 63 - 2},
                                           {"name": "b", "offset": 2 ** 63 - 2, "numel": 2 ** 63 - 1,
                                            "padded_numel": 2 ** 63 - 2}])
variant("unit_negative.json", units=[{"name": "a", "offset": -8, "numel": -1, "padded_numel": -8}])
variant("shard_outside_dir.json", shards=[{"file": "../../../../etc/passwd", "rank": 0, "partition_numel": 4,
                                           "bytes": 100, "crc32": 0},
                                          {"file": "/etc/passwd", "rank": 1, "partition_numel": 4, "bytes": 100,
                                           "crc32": 0}])
variant("param_shape_overflow.json", params=[{"name": "w", "shape": [2 ** 40, 2 ** 40], "offset": 0}])
variant("crc_negative.json", shards=[{"file": "a", "rank": 0, "partition_numel": 4, "bytes": 1, "crc32": -1},
                                     {"file": "b", "rank": 1, "partition_numel": 4, "bytes": 1, "crc32": 2 ** 40}])
variant("version_string.json", version="1")
variant("steps_1e400.json")
with open(os.path.join(HERE, "corpus", "manifest", "steps_1e400.json"), "w") as f:
    f.write(json.dumps(manifest).replace('"global_steps": 3', '"global_steps": 1e400'))
# version 2: one flat layout per tensor-parallel rank and pipeline stage, split parameters with their whole shape
layout = {"units": manifest["units"], "shards": manifest["shards"]}
manifest_v2 = {k: v for k, v in manifest.items() if k not in ("units", "params", "shards")}
manifest_v2.update(version=2, parallel={"data": 2, "tensor": 2, "pipeline": 1},
                   layouts=[dict(layout, tp_rank=r, pp_stage=0,
                                 params=[{"name": "wte", "shape": [1, 3], "offset": 0,
                                          "split": {"dim": 0, "blocks": 1, "full_shape": [2, 3]}}])
                            for r in (0, 1)])
write("manifest", "valid_v2.json", json.dumps(manifest_v2, indent=1))


def variant_v2(name, edit):
    m = json.loads(json.dumps(manifest_v2))
    edit(m)
    write("manifest", name, json.dumps(m))


variant_v2("v2_share_not_its_split.json", lambda m: m["layouts"][1]["params"][0].update(shape=[2, 3]))
variant_v2("v2_split_dim_past_shape.json", lambda m: m["layouts"][0]["params"][0]["split"].update(dim=7))
variant_v2("v2_split_blocks_zero.json", lambda m: m["layouts"][0]["params"][0]["split"].update(blocks=0))
variant_v2("v2_full_shape_huge.json",
           lambda m: m["layouts"][0]["params"][0]["split"].update(full_shape=[2 ** 62, 2 ** 62]))
variant_v2("v2_layout_twice.json", lambda m: m["layouts"][1].update(tp_rank=0))
variant_v2("v2_layout_rank_past_tp.json", lambda m: m["layouts"][1].update(tp_rank=5))
variant_v2("v2_too_few_layouts.json", lambda m: m["layouts"].pop())
variant_v2("v2_tensor_past_int.json", lambda m: m["parallel"].update(tensor=2 ** 40))
# an MoE model's: one expert layout per expert-parallel rank, with the shards of its expert-data-parallel ranks
expert_layout = {"units": [{"name": "h.1.mlp.experts", "offset": 0, "numel": 3, "padded_numel": 4}],
                 "params": [{"name": "h.1.mlp.experts.0.c_fc.bias", "shape": [3], "offset": 0}],
                 "shards": [{"file": "experts_rank_00000.safetensors", "rank": 0, "partition_numel": 4,
                             "bytes": 100, "crc32": 0}]}
manifest_moe = json.loads(json.dumps(manifest_v2))
manifest_moe["parallel"].update(tensor=1, expert=2)
manifest_moe["layouts"] = [dict(layout, tp_rank=0, pp_stage=0, params=manifest["params"])] + [
    dict(expert_layout, tp_rank=0, pp_stage=0, ep_rank=r) for r in (0, 1)]
write("manifest", "valid_moe.json", json.dumps(manifest_moe, indent=1))


def variant_moe(name, edit):
    m = json.loads(json.dumps(manifest_moe))
    edit(m)
    write("manifest", name, json.dumps(m))


variant_moe("moe_ep_rank_twice.json", lambda m: m["layouts"][2].update(ep_rank=0))
variant_moe("moe_ep_rank_past_ep.json", lambda m: m["layouts"][2].update(ep_rank=9))
variant_moe("moe_ep_not_dividing_world.json", lambda m: m["parallel"].update(expert=3))
variant_moe("moe_ep_zero.json", lambda m: m["parallel"].update(expert=0))
variant_moe("moe_expert_layout_tp_rank.json", lambda m: m["layouts"][1].update(tp_rank=1))
variant_moe("moe_expert_too_many_shards.json", lambda m: m["layouts"][1]["shards"].append(
    dict(m["layouts"][1]["shards"][0], rank=1)))
variant_moe("moe_one_expert_layout_missing.json", lambda m: m["layouts"].pop())
variant_moe("moe_ep_rank_string.json", lambda m: m["layouts"][1].update(ep_rank="0"))
write("manifest", "deep.json", '{"format": "dspeed-checkpoint", "model": ' + "[" * DEEP + "]" * DEEP + "}")
write("manifest", "not_object.json", "[]")
write("manifest", "empty.json", "")

# -- chat templates (the fixture templates of tests/fixtures/chat_templates are copied in as well)
write("chat_template", "deep_parens.jinja", "{{ " + "(" * DEEP + "1" + ")" * DEEP + " }}")
write("chat_template", "deep_ifs.jinja", "{% if true %}" * 5000 + "x" + "{% endif %}" * 5000)
write("chat_template", "deep_list.jinja", "{{ " + "[" * DEEP + "]" * DEEP + " }}")
write("chat_template", "runaway_range.jinja", "{% for i in range(1000000000) %}{{ i }}{% endfor %}")
write("chat_template", "nested_ranges.jinja",
      "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}x{% endfor %}{% endfor %}"
      "{% endfor %}")
write("chat_template", "string_times_huge.jinja", "{{ 'x' * 9223372036854775807 }}")
write("chat_template", "int_overflow.jinja", "{{ 9223372036854775807 + 1 }}{{ -9223372036854775807 - 2 }}")
write("chat_template", "int_literal_too_big.jinja", "{{ 99999999999999999999999 }}")
write("chat_template", "div_zero.jinja", "{{ 1 // 0 }}{{ 1 % 0 }}{{ 1 / 0 }}")
write("chat_template", "unterminated.jinja", "{% for m in messages %}{{ m.content ")
write("chat_template", "slices.jinja", "{{ messages[-100:100] }}{{ 'abc'[5:-9] }}{{ messages[9223372036854775807] }}")
write("chat_template", "namespace_abuse.jinja", "{% set ns = 5 %}{% set ns.x = 1 %}")
write("chat_template", "lone_surrogate_and_bytes.jinja", b"{{ '\xff\xfe' ~ '\ud800' }}")
