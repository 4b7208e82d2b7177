"""LMD's three model classes held to what transformers' shared model tests check (issue 43).

In the shape of transformers' `tests/models/vit_mae/test_modeling_vit_mae.py`, written for this project (transformers'
`ModelTesterMixin` is not installed, and is not imported): `LMDModelTester` builds tiny configs and inputs, and
`TestLMDModel` runs each check over `LMDModel`, `LMDForPreTraining` and `LMDForImageClassification`. Masking is
random, so every forward that masks gets a fixed `noise`, as ViTMAE's tests do. Tolerances are transformers' own.
"""

import copy
import inspect
import json
import struct

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import TransformersKwargs

from modeling_lmd import LMDConfig, LMDForImageClassification, LMDForPreTraining, LMDModel
from modeling_lmd.modeling_lmd import LMDForPreTrainingOutput, LMDModelOutput
from modeling_lmd.pretrained import DEMO_LMD

ALL_MODEL_CLASSES = (LMDModel, LMDForPreTraining, LMDForImageClassification)
OUTPUT_CLASSES = {LMDModel: LMDModelOutput, LMDForPreTraining: LMDForPreTrainingOutput,
                  LMDForImageClassification: ImageClassifierOutput}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

#: transformers' eager-vs-SDPA tolerances on CPU (`_test_eager_matches_sdpa_inference`), by dtype.
SDPA_ATOLS = {torch.float32: 1e-6, torch.float16: 5e-3, torch.bfloat16: 1e-2}
SDPA_RTOLS = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 1e-2}

per_class = pytest.mark.parametrize("model_class", ALL_MODEL_CLASSES, ids=lambda cls: cls.__name__)
per_dtype = pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))


class LMDModelTester:
    """Tiny configs (`lmd-tiny`: 32 px images, 8 x 8 latents, 16 patches, 2 layers of width 32 and 4 heads) and
    inputs: images in [-1, 1], a fixed `noise` and class labels."""

    def __init__(self, batch_size: int = 3, num_labels: int = 3, seed: int = 0):
        self.batch_size, self.num_labels, self.seed = batch_size, num_labels, seed
        config = self.get_config()
        self.image_size, self.num_patches = config.image_size, config.num_patches
        self.hidden_size, self.num_hidden_layers = config.hidden_size, config.num_hidden_layers
        self.num_attention_heads = config.num_attention_heads
        # With `noise`, `config.mask_ratio` (0.75) of the patches are hidden: the encoder sees the cls token and 4.
        self.num_visible = int(self.num_patches * (1 - config.mask_ratio))

    def get_config(self, **overrides) -> LMDConfig:
        return LMDConfig.from_preset("lmd-tiny", **{"num_labels": self.num_labels, **overrides})

    def prepare_config_and_inputs(self, batch_size: int | None = None) -> tuple[LMDConfig, dict]:
        batch = batch_size or self.batch_size
        generator = torch.Generator().manual_seed(self.seed)
        pixel_values = torch.rand(batch, 3, self.image_size, self.image_size, generator=generator) * 2 - 1
        noise = torch.rand(batch, self.num_patches, generator=generator)
        labels = torch.randint(self.num_labels, (batch,), generator=generator)
        return self.get_config(), {"pixel_values": pixel_values, "noise": noise, "labels": labels}

    def inputs_for_class(self, model_class, inputs: dict, labels: bool = False, dtype=None) -> dict:
        """What `model_class.forward` takes: the classifier never masks (no `noise`), only it takes `labels`;
        images in `dtype` (the noise is only ranked)."""
        names = ["pixel_values"] + (["noise"] if model_class is not LMDForImageClassification else [])
        names += ["labels"] if labels and model_class is LMDForImageClassification else []
        picked = {name: inputs[name] for name in names}
        if dtype is not None:
            picked["pixel_values"] = picked["pixel_values"].to(dtype)
        return picked

    def create_model(self, model_class, config: LMDConfig | None = None):
        torch.manual_seed(self.seed)
        model = model_class(config if config is not None else self.get_config())
        model.base_model.vae_is_pretrained = True  # random on purpose: no warning meant for users
        return model.eval()

    def seq_length(self, model_class) -> int:
        """Encoder tokens: the cls token and the visible patches (all of them for the classifier)."""
        return 1 + (self.num_patches if model_class is LMDForImageClassification else self.num_visible)

    def check_outputs(self, model_class, outputs, batch: int) -> None:
        assert isinstance(outputs, OUTPUT_CLASSES[model_class])
        if model_class is LMDModel:
            assert outputs.last_hidden_state.shape == (batch, self.seq_length(model_class), self.hidden_size)
            assert outputs.mask.shape == outputs.ids_restore.shape == (batch, self.num_patches)
            assert torch.equal(outputs.mask.sum(1), torch.full((batch,), float(self.num_patches - self.num_visible)))
        elif model_class is LMDForPreTraining:
            assert outputs.logits.shape == (batch, self.num_patches, 2 * 2 * 4)
            assert outputs.loss.shape == () and torch.isfinite(outputs.loss)
        else:
            assert outputs.logits.shape == (batch, self.num_labels)


def less_flaky(model):
    """As transformers' `set_model_for_less_flaky_test`: norms with eps 1, so that tiny variances do not amplify
    the kernels' rounding differences."""
    for module in model.modules():
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
            module.eps = 1.0
    return model


def can_output_attentions(model) -> bool:
    """transformers' `_can_output_attn`: an `output_attentions` parameter, or `**kwargs: Unpack[...]` of a
    TypedDict that has one. Models without either are skipped by the attention-output variants of its SDPA tests."""
    parameters = inspect.signature(model.forward).parameters
    if "output_attentions" in parameters:
        return True
    kwargs = parameters.get("kwargs")
    try:
        return "output_attentions" in kwargs.annotation.__args__[0].__annotations__
    except AttributeError:
        return False


def tensors(outputs) -> dict:
    """Every tensor of an output, the tuples of hidden states and attentions flattened."""
    flat = {}
    for key, value in outputs.items():
        for index, tensor in enumerate(value) if isinstance(value, tuple) else [(None, value)]:
            flat[key if index is None else f"{key}.{index}"] = tensor
    return flat


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each class, saved once in float32 (what the eager/SDPA comparisons load)."""
    tester = LMDModelTester()
    paths = {}
    for model_class in ALL_MODEL_CLASSES:
        paths[model_class] = tmp_path_factory.mktemp(model_class.__name__)
        tester.create_model(model_class).save_pretrained(paths[model_class])
    return paths


class TestLMDModel:
    all_model_classes = ALL_MODEL_CLASSES

    def setup_method(self):
        self.model_tester = LMDModelTester()

    # --- forward ---------------------------------------------------------------------------------------

    @per_class
    def test_model(self, model_class):
        _, inputs = self.model_tester.prepare_config_and_inputs()
        model = self.model_tester.create_model(model_class)
        with torch.no_grad():
            outputs = model(**self.model_tester.inputs_for_class(model_class, inputs, labels=True))
        self.model_tester.check_outputs(model_class, outputs, self.model_tester.batch_size)

    # --- save / load, dtypes -----------------------------------------------------------------------------

    @per_class
    @per_dtype
    def test_save_load(self, model_class, dtype, tmp_path):
        """A model in `dtype` saves and loads back the same weights and outputs, in `dtype`, and `dtype="auto"`
        gives back the dtype it was saved in (the config records it)."""
        _, inputs = self.model_tester.prepare_config_and_inputs()
        inputs = self.model_tester.inputs_for_class(model_class, inputs, labels=True, dtype=dtype)
        model = self.model_tester.create_model(model_class).to(dtype)
        with torch.no_grad():
            before = model(**inputs)
        self.model_tester.check_outputs(model_class, before, self.model_tester.batch_size)
        model.save_pretrained(tmp_path)
        for loaded in (model_class.from_pretrained(tmp_path, dtype=dtype),
                       model_class.from_pretrained(tmp_path, dtype="auto")):
            assert loaded.dtype == dtype and loaded.base_model.vae.dtype == dtype
            source = model.state_dict()
            assert all(torch.equal(tensor, source[name]) for name, tensor in loaded.state_dict().items())
            with torch.no_grad():
                after = loaded(**inputs)
            for name, tensor in tensors(before).items():
                torch.testing.assert_close(tensors(after)[name], tensor, rtol=0, atol=1e-5)

    @per_class
    def test_dtype_auto_on_the_shipped_float16_checkpoint(self, model_class):
        """demo-lmd stores every weight in float16, but its config.json records `"dtype": "float32"`, and
        `dtype="auto"` takes the config's: the model loads in float32 (exactly the stored values). In float16
        (`dtype=torch.float16`) it runs, within half precision of float32."""
        with open(f"{DEMO_LMD}/model.safetensors", "rb") as handle:
            header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
        assert {entry["dtype"] for name, entry in header.items() if name != "__metadata__"} == {"F16"}
        with open(f"{DEMO_LMD}/config.json") as handle:
            assert json.load(handle)["dtype"] == "float32"
        kwargs = {"num_labels": 3} if model_class is LMDForImageClassification else {}
        auto = model_class.from_pretrained(DEMO_LMD, dtype="auto", **kwargs)
        assert auto.dtype == torch.float32 and auto.base_model.vae.dtype == torch.float32
        half = model_class.from_pretrained(DEMO_LMD, dtype=torch.float16, **kwargs)
        assert half.dtype == torch.float16 and half.base_model.vae.dtype == torch.float16
        if model_class is LMDForImageClassification:
            half.load_state_dict(auto.state_dict())  # the same (new, random) head in both

        size, num_patches = auto.config.image_size, auto.config.num_patches
        generator = torch.Generator().manual_seed(0)
        inputs = {"pixel_values": torch.rand(2, 3, size, size, generator=generator) * 2 - 1,
                  "noise": torch.rand(2, num_patches, generator=generator)}
        inputs = self.model_tester.inputs_for_class(model_class, inputs)
        with torch.no_grad():
            full = auto(**inputs)
            halved = half(**{**inputs, "pixel_values": inputs["pixel_values"].half()})
        key = "last_hidden_state" if model_class is LMDModel else "logits"
        assert halved[key].dtype == torch.float16 and torch.isfinite(halved[key]).all()
        scale = full[key].abs().max()
        torch.testing.assert_close(halved[key].float(), full[key], rtol=0, atol=float(scale) * 2e-2)

    # --- attention implementations --------------------------------------------------------------------

    @per_class
    @per_dtype
    @pytest.mark.parametrize("output_attentions", [False, True], ids=["", "output_attentions"])
    def test_eager_matches_sdpa_inference(self, model_class, dtype, output_attentions, saved):
        """transformers' `_test_eager_matches_sdpa_inference`: loaded in `dtype` with "sdpa", a copy switched to
        "eager", a batch of 7, `output_hidden_states=True` (and `output_attentions`, which only eager answers): the
        classifier's logits, else the last hidden state, agree within transformers' tolerances for 80% of the
        batch (bf16's atol grows with the outputs' magnitude, as there)."""
        model_sdpa = model_class.from_pretrained(saved[model_class], dtype=dtype, attn_implementation="sdpa")
        model_eager = copy.deepcopy(model_sdpa)
        model_eager.set_attn_implementation("eager")
        assert model_sdpa.config._attn_implementation == "sdpa"
        assert model_eager.config._attn_implementation == "eager"
        less_flaky(model_sdpa.eval())
        less_flaky(model_eager.eval())

        _, inputs = self.model_tester.prepare_config_and_inputs(batch_size=7)
        inputs = {**self.model_tester.inputs_for_class(model_class, inputs, dtype=dtype),
                  "output_hidden_states": True, "output_attentions": output_attentions}
        with torch.no_grad():
            outputs_eager = model_eager(**inputs)
            outputs_sdpa = model_sdpa(**inputs)
        if model_class is LMDForImageClassification:
            eager, sdpa = outputs_eager.logits, outputs_sdpa.logits
        else:
            eager, sdpa = outputs_eager.hidden_states[-1], outputs_sdpa.hidden_states[-1]
        assert eager.dtype == sdpa.dtype == dtype
        atol, rtol = SDPA_ATOLS[dtype], SDPA_RTOLS[dtype]
        if dtype == torch.bfloat16:
            atol = max(atol, float(torch.max(sdpa.abs().amax(), eager.abs().amax())) * 3e-2)
        matches = [torch.allclose(s, e, atol=atol, rtol=rtol) for s, e in zip(sdpa, eager)]
        assert sum(matches) / len(matches) >= 0.8, ((sdpa - eager).abs().max(), atol, rtol)
        if output_attentions:  # eager computes the weights; "sdpa" gives none (and warns), as ViTMAE
            assert len(outputs_eager.attentions) == self.model_tester.num_hidden_layers
            assert outputs_sdpa.attentions == ()

    @per_class
    def test_attention_outputs(self, model_class):
        _, inputs = self.model_tester.prepare_config_and_inputs()
        inputs = self.model_tester.inputs_for_class(model_class, inputs)
        model = self.model_tester.create_model(model_class, self.model_tester.get_config(attn_implementation="eager"))
        seq, batch = self.model_tester.seq_length(model_class), self.model_tester.batch_size
        with torch.no_grad():
            by_argument = model(**inputs, output_attentions=True)
            model.config.output_attentions = True
            by_config = model(**inputs)
        for outputs in (by_argument, by_config):
            assert len(outputs.attentions) == self.model_tester.num_hidden_layers
            for weights in outputs.attentions:
                assert weights.shape == (batch, self.model_tester.num_attention_heads, seq, seq)
                torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
        assert all(torch.equal(a, b) for a, b in zip(by_argument.attentions, by_config.attentions))
        model.config.output_attentions = False
        with torch.no_grad():
            assert model(**inputs).attentions is None

    @per_class
    def test_hidden_states_output(self, model_class):
        _, inputs = self.model_tester.prepare_config_and_inputs()
        inputs = self.model_tester.inputs_for_class(model_class, inputs)
        model = self.model_tester.create_model(model_class)
        seq, batch = self.model_tester.seq_length(model_class), self.model_tester.batch_size
        with torch.no_grad():
            by_argument = model(**inputs, output_hidden_states=True)
            model.config.output_hidden_states = True
            by_config = model(**inputs)
            encoded = model.base_model(**{**inputs, "output_hidden_states": False})
        for outputs in (by_argument, by_config):
            # The embeddings and every layer's output; the last one before the final LayerNorm (as ViTMAE's).
            assert len(outputs.hidden_states) == self.model_tester.num_hidden_layers + 1
            assert all(h.shape == (batch, seq, self.model_tester.hidden_size) for h in outputs.hidden_states)
            torch.testing.assert_close(model.base_model.layernorm(outputs.hidden_states[-1]),
                                       encoded.last_hidden_state)
        assert all(torch.equal(a, b) for a, b in zip(by_argument.hidden_states, by_config.hidden_states))

    @per_class
    def test_forward_signature_takes_transformers_kwargs(self, model_class):
        """`**kwargs: Unpack[TransformersKwargs]`, as ViTMAE's forwards: what transformers' tests read to run their
        attention-output variants, and its output-recording machinery relies on."""
        model = self.model_tester.create_model(model_class)
        for method in (model.forward, model.base_model.get_image_features):
            annotation = inspect.signature(method).parameters["kwargs"].annotation
            assert annotation.__args__ == (TransformersKwargs,), method
        assert can_output_attentions(model)

    # --- return_dict -------------------------------------------------------------------------------------

    @per_class
    @pytest.mark.parametrize("config_return_dict", [True, False], ids=["config_dict", "config_tuple"])
    @pytest.mark.parametrize("return_dict", [True, False, None], ids=["dict", "tuple", "none"])
    def test_return_dict(self, model_class, return_dict, config_return_dict):
        """`return_dict` wins, `None` follows `config.return_dict`; the tuple is the output's `to_tuple()`."""
        _, inputs = self.model_tester.prepare_config_and_inputs()
        inputs = {**self.model_tester.inputs_for_class(model_class, inputs, labels=True),
                  "output_hidden_states": True, "output_attentions": True}
        model = self.model_tester.create_model(model_class, self.model_tester.get_config(attn_implementation="eager"))
        with torch.no_grad():
            reference = model(**inputs, return_dict=True)
            model.config.return_dict = config_return_dict
            outputs = model(**inputs, return_dict=return_dict)
        check_return_dict(outputs, reference, config_return_dict if return_dict is None else return_dict)

    @per_class
    @pytest.mark.parametrize("config_return_dict", [True, False], ids=["config_dict", "config_tuple"])
    @pytest.mark.parametrize("return_dict", [True, False, None], ids=["dict", "tuple", "none"])
    def test_get_image_features_return_dict(self, model_class, return_dict, config_return_dict):
        """transformers 5's contract (CLIP's, SigLIP's): a `BaseModelOutputWithPooling` whose `pooler_output` is the
        features, or its tuple `(last_hidden_state, pooler_output)`; `config.return_dict=False` alone is enough."""
        _, inputs = self.model_tester.prepare_config_and_inputs()
        model = self.model_tester.create_model(model_class)
        model.config.return_dict = config_return_dict
        features = model.base_model.get_image_features
        with torch.no_grad():
            # `None` twice: left out, and passed.
            calls = [{}, {"return_dict": None}] if return_dict is None else [{"return_dict": return_dict}]
            results = [features(pixel_values=inputs["pixel_values"], **call) for call in calls]
            reference = features(pixel_values=inputs["pixel_values"], return_dict=True)
        assert isinstance(reference, BaseModelOutputWithPooling)
        for outputs in results:
            check_return_dict(outputs, reference, config_return_dict if return_dict is None else return_dict)

    @pytest.mark.parametrize("pooling", ["mean", "cls"])
    def test_get_image_features(self, pooling):
        _, inputs = self.model_tester.prepare_config_and_inputs()
        model = self.model_tester.create_model(LMDModel, self.model_tester.get_config(attn_implementation="eager"))
        with torch.no_grad():
            encoded = model(pixel_values=inputs["pixel_values"])
            features = model.get_image_features(pixel_values=inputs["pixel_values"], pooling=pooling,
                                                output_hidden_states=True, output_attentions=True)
            from_latents = model.get_image_features(latents=encoded.latents, pooling=pooling)
        tokens = encoded.last_hidden_state
        expected = tokens[:, 1:].mean(1) if pooling == "mean" else tokens[:, 0]
        assert features.pooler_output.shape == (self.model_tester.batch_size, self.model_tester.hidden_size)
        torch.testing.assert_close(features.pooler_output, expected)
        torch.testing.assert_close(features.last_hidden_state, tokens)
        torch.testing.assert_close(from_latents.pooler_output, expected)
        assert len(features.hidden_states) == self.model_tester.num_hidden_layers + 1
        assert len(features.attentions) == self.model_tester.num_hidden_layers
        with pytest.raises(ValueError, match="pooling"):
            model.get_image_features(pixel_values=inputs["pixel_values"], pooling="max")

    # --- training ------------------------------------------------------------------------------------

    @per_class
    def test_get_input_embeddings(self, model_class):
        """The patch embedding, as ViTMAE's: what `enable_input_require_grads` hooks."""
        model = self.model_tester.create_model(model_class)
        assert model.get_input_embeddings() is model.base_model.embeddings.patch_embeddings

    @per_class
    @pytest.mark.parametrize("use_reentrant", [False, True], ids=["non_reentrant", "reentrant"])
    def test_gradient_checkpointing(self, model_class, use_reentrant):
        """Checkpointed layers give the loss and gradients of plain ones."""
        _, inputs = self.model_tester.prepare_config_and_inputs()
        inputs = self.model_tester.inputs_for_class(model_class, inputs, labels=True)
        results = []
        for checkpointing in (False, True):
            model = self.model_tester.create_model(model_class).train()
            if checkpointing:
                model.activation_checkpointing_enable({"use_reentrant": use_reentrant})
                assert model.is_activation_checkpointing
                assert all(layer.gradient_checkpointing for layer in model.base_model.layers)
            loss = training_loss(model, inputs)
            loss.backward()
            grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
            assert all(grad is not None for grad in grads.values()), [n for n, g in grads.items() if g is None]
            results.append((loss.detach(), grads))
        (loss, grads), (loss_checkpointed, grads_checkpointed) = results
        torch.testing.assert_close(loss_checkpointed, loss, rtol=0, atol=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(grads_checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)

    @per_class
    def test_lora_with_gradient_checkpointing_trains_the_adapters(self, model_class):
        """PEFT's recipe: LoRA on `query` / `value`, everything else frozen, reentrant checkpointing, and
        `enable_input_require_grads()` so that the checkpointed layers' input requires grad. It needs
        `get_input_embeddings`; without it no gradient reaches the adapters."""
        _, inputs = self.model_tester.prepare_config_and_inputs()
        inputs = self.model_tester.inputs_for_class(model_class, inputs, labels=True)
        model = self.model_tester.create_model(model_class)
        model.activation_checkpointing_enable({"use_reentrant": True})
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["query", "value"],
                                                      init_lora_weights=False))
        peft_model.enable_input_require_grads()
        peft_model.train()
        training_loss(peft_model, inputs).backward()
        adapters = {name: p for name, p in peft_model.named_parameters() if "lora_" in name}
        assert adapters and all(p.requires_grad for p in adapters.values())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters.values())
        assert all(p.grad is None for name, p in peft_model.named_parameters() if "lora_" not in name)

    # --- determinism, batching ----------------------------------------------------------------------------

    @per_class
    def test_determinism(self, model_class):
        """Under a fixed `noise` (the classifier never masks), two forwards give the same outputs, bit for bit."""
        _, inputs = self.model_tester.prepare_config_and_inputs()
        inputs = {**self.model_tester.inputs_for_class(model_class, inputs, labels=True), "output_hidden_states": True}
        model = self.model_tester.create_model(model_class)
        with torch.no_grad():
            first, second = tensors(model(**inputs)), tensors(model(**inputs))
        assert first.keys() == second.keys()
        assert all(torch.equal(first[name], second[name]) for name in first), [
            name for name in first if not torch.equal(first[name], second[name])]
        if model_class is not LMDForImageClassification:
            with torch.no_grad():
                other = model(**{**inputs, "noise": inputs["noise"].roll(1, dims=1)})
            assert not torch.equal(other.mask, first["mask"])

    @per_class
    def test_batching_equivalence(self, model_class):
        """Each sample of a batch gives what it gives alone (transformers' atol 1e-5); the loss is a batch mean."""
        _, inputs = self.model_tester.prepare_config_and_inputs()
        inputs = {**self.model_tester.inputs_for_class(model_class, inputs), "output_hidden_states": True}
        model = self.model_tester.create_model(model_class)
        with torch.no_grad():
            batched = tensors(model(**inputs))
            singles = [tensors(model(**{k: v[i:i + 1] if torch.is_tensor(v) else v for k, v in inputs.items()}))
                       for i in range(self.model_tester.batch_size)]
        batched.pop("loss", None)
        for name, tensor in batched.items():
            alone = torch.cat([single[name] for single in singles])
            torch.testing.assert_close(alone, tensor, rtol=0, atol=1e-5, msg=name)

    # --- classification losses ----------------------------------------------------------------------------

    @pytest.mark.parametrize(("problem_type", "num_labels", "labels", "inferred"), [
        ("regression", 1, "float", "regression"),
        ("regression", 3, "float_matrix", "regression"),
        ("single_label_classification", 3, "index", "single_label_classification"),
        ("multi_label_classification", 3, "binary_matrix", "multi_label_classification"),
        (None, 1, "float", "regression"),
        (None, 1, "index", "regression"),  # integer targets of a one-output head: regression, as before
        (None, 3, "index", "single_label_classification"),
        (None, 3, "binary_matrix", "multi_label_classification"),
    ])
    def test_problem_types(self, problem_type, num_labels, labels, inferred, tmp_path):
        """ViT's losses by `config.problem_type` (chosen from the labels when unset, then recorded and saved)."""
        batch = self.model_tester.batch_size
        generator = torch.Generator().manual_seed(1)
        targets = {"float": lambda: torch.randn(batch, generator=generator),
                   "float_matrix": lambda: torch.randn(batch, num_labels, generator=generator),
                   "index": lambda: torch.randint(num_labels, (batch,), generator=generator) + (num_labels == 1),
                   "binary_matrix": lambda: torch.randint(2, (batch, num_labels), generator=generator).float()}
        target = targets[labels]()
        config = self.model_tester.get_config(num_labels=num_labels, problem_type=problem_type)
        model = self.model_tester.create_model(LMDForImageClassification, config).train()
        _, inputs = self.model_tester.prepare_config_and_inputs()
        outputs = model(pixel_values=inputs["pixel_values"], labels=target)
        logits = outputs.logits
        assert logits.shape == (batch, num_labels) and model.config.problem_type == inferred
        if inferred == "regression":
            expected = F.mse_loss(logits.squeeze(), target.squeeze().to(logits.dtype))
        elif inferred == "single_label_classification":
            expected = F.cross_entropy(logits, target)
        else:
            expected = F.binary_cross_entropy_with_logits(logits, target)
        torch.testing.assert_close(outputs.loss, expected)
        outputs.loss.backward()
        assert model.classifier.weight.grad is not None
        model.save_pretrained(tmp_path)
        assert LMDForImageClassification.from_pretrained(tmp_path).config.problem_type == inferred

    def test_single_label_loss_is_normalised_by_the_trainers_item_count(self):
        """The Trainer passes `num_items_in_batch` under gradient accumulation (and then does not divide the loss
        itself): the cross-entropy is summed and divided by it, as transformers' `fixed_cross_entropy`."""
        _, inputs = self.model_tester.prepare_config_and_inputs()
        model = self.model_tester.create_model(LMDForImageClassification)
        with torch.no_grad():
            mean = model(pixel_values=inputs["pixel_values"], labels=inputs["labels"]).loss
            accumulated = model(pixel_values=inputs["pixel_values"], labels=inputs["labels"],
                                num_items_in_batch=torch.tensor(2 * self.model_tester.batch_size))
        torch.testing.assert_close(accumulated.loss, mean / 2)

    def test_half_precision_regression_takes_float32_targets(self):
        config = self.model_tester.get_config(num_labels=2, problem_type="regression")
        model = self.model_tester.create_model(LMDForImageClassification, config).to(torch.bfloat16)
        _, inputs = self.model_tester.prepare_config_and_inputs()
        outputs = model(pixel_values=inputs["pixel_values"].bfloat16(), labels=torch.rand(3, 2))
        assert outputs.loss.dtype == torch.bfloat16 and torch.isfinite(outputs.loss)

    # --- torch.export ------------------------------------------------------------------------------------

    @per_class
    def test_torch_export(self, model_class):
        """`torch.export` of each class (the masking from `noise`, the VAE inside): the exported program gives the
        eager outputs."""
        _, inputs = self.model_tester.prepare_config_and_inputs()
        inputs = self.model_tester.inputs_for_class(model_class, inputs, labels=True)
        model = self.model_tester.create_model(model_class)
        exported = torch.export.export(model, args=(), kwargs=inputs)
        with torch.no_grad():
            expected = tensors(model(**inputs))
            got = tensors(exported.module()(**inputs))
        assert got.keys() == expected.keys()
        for name, tensor in expected.items():
            torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def training_loss(model, inputs: dict) -> torch.Tensor:
    """The model's loss; the base model has none, so the mean of its output stands in."""
    outputs = model(**inputs)
    return outputs.loss if outputs.get("loss") is not None else outputs.last_hidden_state.mean()


def check_return_dict(outputs, reference, as_dict: bool) -> None:
    """`outputs` is `reference` as a `ModelOutput` (`as_dict`), or its `to_tuple()`."""
    if as_dict:
        assert type(outputs) is type(reference) and outputs.keys() == reference.keys()
        actual, expected = tensors(outputs), tensors(reference)
        assert actual.keys() == expected.keys()
        assert all(torch.equal(actual[name], expected[name]) for name in expected)
        return
    assert isinstance(outputs, tuple)
    expected = reference.to_tuple()
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected):
        if isinstance(want, tuple):
            assert isinstance(got, tuple) and len(got) == len(want)
            assert all(torch.equal(a, b) for a, b in zip(got, want))
        else:
            assert torch.equal(got, want)
