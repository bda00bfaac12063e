import keras
from keras import ops

from keras_metaformer.arguments import check_optional_float
from keras_metaformer.arguments import check_positive
from keras_metaformer.arguments import check_rate
from keras_metaformer.layers.activations import serialize_activation
from keras_metaformer.layers.compilation import compiled_by_xla
from keras_metaformer.layers.drop_path import DropPath
from keras_metaformer.layers.dtypes import is_16_bit
from keras_metaformer.layers.layer_scale import LayerScale
from keras_metaformer.layers.mlp import Mlp
from keras_metaformer.layers.norms import GroupNormalization
from keras_metaformer.layers.norms import get_norm
from keras_metaformer.layers.pool_mixer import PoolMixer
from keras_metaformer.layers.remat import Rematerializable
from keras_metaformer.layers.remat import with_drawn
from keras_metaformer.layers.token_mixers import get_token_mixer


@keras.saving.register_keras_serializable(package="keras_metaformer")
class MetaFormerBlock(Rematerializable, keras.layers.Layer):
    """The MetaFormer block: a token-mixer sub-block and an MLP sub-block.

    ```
    x = res_scale1 * x + drop_path(layer_scale1 * token_mixer(norm1(x)))
    x = res_scale2 * x + drop_path(layer_scale2 * mlp(norm2(x)))
    ```

    PoolFormer uses layer scales and no residual scales; the MetaFormer
    baselines use residual scales (in their last two stages) and no layer
    scales. Either is left out when its initial value is `None`.

    The token mixer is pluggable: PoolFormer uses average pooling
    (`"pool"`), a Transformer would use attention. Any registered mixer name
    (see `keras_metaformer.layers.token_mixer_names()`) or any Keras layer
    that keeps the input shape can be passed.

    Reference: Yu et al., "MetaFormer is Actually What You Need for Vision",
    CVPR 2022.

    Args:
        token_mixer: a registered mixer name, or a Keras layer instance
            owned by this block (do not share one instance between blocks).
            An instance whose dtype policy is the global default takes the
            block's policy, even if that default was passed as its `dtype`
            explicitly (the two cannot be told apart); one in another
            policy, or with weights in another policy, is refused.
            A mixer whose output channels scale with its input channels
            (linear, channel by channel) may set the class attribute
            `commutes_with_channel_scale = True`: the block then folds
            `layer_scale1` into norm1, one product fewer over the tensor.
            One that also sets `ignores_channel_shift = True` (a value
            added to a whole channel does not change its output, as with
            pooling minus the input) lets inference skip normalising: norm1
            becomes a per-channel scale, which the block passes as the
            mixer's `scale` argument (its output is multiplied by it).
        pool_size: odd int, window of the `"pool"` mixer (default 3). Only
            valid with `token_mixer="pool"`.
        mlp_ratio: float, hidden width of the MLP as a multiple of channels.
        activation: activation of the MLP: `"gelu"` (exact, the default),
            `"relu"`, `"silu"`, `"star_relu"` (the baselines') or any Keras
            activation.
        norm: `"group"` (GroupNorm with one group, PoolFormer's choice),
            `"layer"` or `"batch"`.
        norm_epsilon: float, epsilon of both norms. PoolFormer uses 1e-5,
            the baselines 1e-6.
        norm_use_bias: bool, whether the norms have a learnable shift.
        use_bias: bool, whether the MLP's Dense layers have biases.
        layer_scale_init_value: float initial value of the per-channel layer
            scales, or `None` for no layer scale.
        res_scale_init_value: float initial value of the per-channel scales
            of the residual stream, or `None` for none.
        drop_path_rate: float in `[0, 1)`, stochastic depth of both branches.
        seed: int or `None`, seed of the stochastic-depth draws.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Example:

    >>> import numpy as np
    >>> block = MetaFormerBlock(token_mixer="pool", pool_size=3)
    >>> y = block(np.zeros((2, 14, 14, 64), "float32"))
    >>> tuple(y.shape)
    (2, 14, 14, 64)
    >>> sorted(w.path.split("/", 1)[1] for w in block.weights)[:4]
    ['layer_scale1/scale', 'layer_scale2/scale', 'mlp/fc1/bias', 'mlp/fc1/kernel']
    """

    def __init__(
        self,
        token_mixer="pool",
        pool_size=None,
        mlp_ratio=4.0,
        activation="gelu",
        norm="group",
        norm_epsilon=1e-5,
        norm_use_bias=True,
        use_bias=True,
        layer_scale_init_value=1e-5,
        res_scale_init_value=None,
        drop_path_rate=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.pool_size = pool_size
        self.mlp_ratio = check_positive("mlp_ratio", mlp_ratio)
        self.activation = activation
        self.norm = norm
        self.norm_epsilon = check_positive("norm_epsilon", norm_epsilon)
        self.norm_use_bias = norm_use_bias
        self.use_bias = use_bias
        self.layer_scale_init_value = check_optional_float("layer_scale_init_value", layer_scale_init_value)
        self.res_scale_init_value = check_optional_float("res_scale_init_value", res_scale_init_value)
        self.drop_path_rate = check_rate("drop_path_rate", drop_path_rate)
        self.seed = seed

        policy = self.dtype_policy
        if isinstance(token_mixer, keras.layers.Layer):
            if pool_size is not None:
                raise ValueError(_POOL_SIZE_ERROR.format(token_mixer))
            self.token_mixer = _adopt_dtype_policy(token_mixer, policy, self.name)
        else:
            options = {}
            if pool_size is not None:
                if token_mixer != "pool":
                    raise ValueError(_POOL_SIZE_ERROR.format(token_mixer))
                options["pool_size"] = pool_size
            self.token_mixer = get_token_mixer(token_mixer, name="token_mixer", dtype=policy, **options)
        self._token_mixer_identifier = token_mixer

        self.norm1, self.norm2 = (
            get_norm(norm, norm_epsilon, name=name, center=norm_use_bias, dtype=policy) for name in ("norm1", "norm2")
        )
        self.mlp = Mlp(mlp_ratio, activation, use_bias=use_bias, dtype=policy, name="mlp")
        self.layer_scale1 = self.layer_scale2 = None
        if layer_scale_init_value is not None:
            self.layer_scale1 = LayerScale(layer_scale_init_value, dtype=policy, name="layer_scale1")
            self.layer_scale2 = LayerScale(layer_scale_init_value, dtype=policy, name="layer_scale2")
        self.res_scale1 = self.res_scale2 = None
        if res_scale_init_value is not None:
            self.res_scale1 = LayerScale(res_scale_init_value, dtype=policy, name="res_scale1")
            self.res_scale2 = LayerScale(res_scale_init_value, dtype=policy, name="res_scale2")
        self.drop_path = None
        if drop_path_rate > 0:
            self.drop_path = DropPath(drop_path_rate, seed=seed, dtype=policy, name="drop_path")

    def build(self, input_shape):
        for layer in (
            self.norm1,
            self.token_mixer,
            self.layer_scale1,
            self.norm2,
            self.mlp,
            self.layer_scale2,
            self.res_scale1,
            self.res_scale2,
        ):
            if layer is not None and not layer.built:
                layer.build(input_shape)

    def _residual_branch(self, x, branch, layer_scale, res_scale, training, keep):
        if layer_scale is not None:
            branch = layer_scale(branch)
        if self.drop_path is not None:
            branch = self.drop_path(branch, training=training, keep=keep)
        if res_scale is not None:
            x = res_scale(x)
        return x + branch

    def call(self, inputs, training=None, drop_keep1=None, drop_keep2=None):
        # Layer scales are folded into the affine maps beside them: the second
        # into the MLP's output projection, the first, when the mixer mixes
        # each channel on its own and linearly (pooling), into norm1's gamma
        # and beta. Besides a product fewer over the tensor, this makes a
        # matrix product a direct consumer of the residual stream's gradient.
        # XLA's CPU backend then writes that gradient once per block; before,
        # it recomputed it, sums over several blocks, inside each consumer.
        # PoolFormer-S12 training steps under JAX, interleaved in one process:
        # 3-8% faster.
        x = inputs
        scale2 = None if self.layer_scale2 is None else self.layer_scale2.scale
        if not training and self._mixes_in_float32(x):
            x, normed = self._float32_mixing(x)
            transformed = self.mlp(normed, output_scale=scale2)
            return self._residual_branch(x, transformed, None, self.res_scale2, training, drop_keep2)
        if not training and self._norm1_is_a_scale():
            # The mixer ignores a value added to a whole channel and scales
            # with its channels, and norm1 is `x * scale + shift`, both per
            # channel of each sample: so `mixer(norm1(x)) = scale * mixer(x)`.
            # Norm1 needs only its variance, and nothing normalises the
            # tensor. PoolFormer-S12 in a TensorFlow graph at batch 32 (A/B,
            # 2-core Intel Xeon with AMX): 640 -> 620 ms in float32, 438 ->
            # 418 in bfloat16. Under XLA, which fused the normalisation into
            # the pooling, no change beyond noise.
            scale = self.norm1.channel_scale(x, output_scale=self.layer_scale1.scale)
            mixed = self.token_mixer(x, scale=scale)
            layer_scale1 = None
        elif self._folds_layer_scale1():
            normed = self.norm1(x, output_scale=self.layer_scale1.scale)
            mixed = self.token_mixer(normed)
            layer_scale1 = None
        else:
            mixed = self.token_mixer(self.norm1(x, training=training))
            layer_scale1 = self.layer_scale1
        x = self._residual_branch(x, mixed, layer_scale1, self.res_scale1, training, drop_keep1)
        transformed = self.mlp(self.norm2(x, training=training), output_scale=scale2)
        return self._residual_branch(x, transformed, None, self.res_scale2, training, drop_keep2)

    def _mixes_in_float32(self, x):
        """Whether inference runs the pooling sub-block and norm2 on one
        float32 copy of a 16-bit `x` (see `_float32_mixing`): outside XLA,
        for a `PoolMixer` after a norm1 that is only a scale, with a
        GroupNorm as norm2 and no residual scale."""
        return (
            is_16_bit(x.dtype)
            and self._norm1_is_a_scale()
            and isinstance(self.token_mixer, PoolMixer)
            and isinstance(self.norm2, GroupNormalization)
            and self.res_scale1 is None
            and not compiled_by_xla()
        )

    def _float32_mixing(self, x):
        """The residual stream after the pooling sub-block, rounded to
        `x`'s dtype, and norm2 of it, at inference.

        The statistics of norm1 and norm2, the pooling and the residual sum
        all need float32. Computed op by op, each layer converted its
        16-bit input and rounded its output: five full-tensor conversions
        per block, and a 16-bit residual sum, which TensorFlow's CPU kernels
        run more slowly than a float32 one. Here one float32 copy of `x`
        feeds norm1's statistics, the pooling and the sum; norm2 reads the
        float32 sum, which is rounded once for the stream: three
        conversions. The layers' `call` methods are used directly because
        calling the layers would round their float32 inputs to the compute
        dtype. PoolFormer-S12 in a TensorFlow graph, bfloat16 (A/B, 2-core
        Intel Xeon with AMX, medians): batch 32 went from 372 to 346 ms,
        batch 1 from 32.5 to 32.0 ms. Under XLA, which fuses the
        conversions into the loops around them, the block keeps its
        layer-by-layer form.
        """
        x32 = ops.cast(x, "float32")
        scale = self.norm1.channel_scale(x32, output_scale=self.layer_scale1.scale)
        x32 = x32 + self.token_mixer.call(x32, scale=scale)
        return ops.cast(x32, x.dtype), self.norm2.call(x32)

    def rematerialized_call(self, layer_call, *args, **kwargs):
        # Stochastic depth's draws, in the order `call` makes them, before the checkpoint.
        if kwargs.get("training") and self.drop_path is not None and self.drop_path.rate > 0:
            keeps = {name: self.drop_path.draw_keep(args[0]) for name in ("drop_keep1", "drop_keep2")}
            return with_drawn(super().rematerialized_call, layer_call, args, kwargs, **keeps)
        return super().rematerialized_call(layer_call, *args, **kwargs)

    def _norm1_is_a_scale(self):
        """Whether norm1 reduces to a per-channel scale before the mixer: a
        mixer that also sets `ignores_channel_shift = True` (adding a value to
        a whole channel of its input leaves its output as it is) cancels
        norm1's shift. Inference only: in training, norm1's beta would then
        have no gradient."""
        return (
            self._folds_layer_scale1()
            and self.norm1.groups == 1
            and getattr(self.token_mixer, "ignores_channel_shift", False)
        )

    def _folds_layer_scale1(self):
        """Whether `layer_scale1` can be folded into norm1's affine map: a
        mixer that sets `commutes_with_channel_scale = True` promises that
        scaling its input's channels scales its output's the same way."""
        return (
            self.layer_scale1 is not None
            and isinstance(self.norm1, GroupNormalization)
            and getattr(self.token_mixer, "commutes_with_channel_scale", False)
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        token_mixer = self._token_mixer_identifier
        if isinstance(token_mixer, keras.layers.Layer):
            token_mixer = keras.saving.serialize_keras_object(token_mixer)
        config.update(
            {
                "token_mixer": token_mixer,
                "pool_size": self.pool_size,
                "mlp_ratio": self.mlp_ratio,
                "activation": serialize_activation(self.activation),
                "norm": self.norm,
                "norm_epsilon": self.norm_epsilon,
                "norm_use_bias": self.norm_use_bias,
                "use_bias": self.use_bias,
                "layer_scale_init_value": self.layer_scale_init_value,
                "res_scale_init_value": self.res_scale_init_value,
                "drop_path_rate": self.drop_path_rate,
                "seed": self.seed,
            }
        )
        return config


def _adopt_dtype_policy(mixer, policy, block_name):
    """Gives a mixer instance the block's dtype policy, so that per-layer
    mixed precision (`MetaFormerBlock(..., dtype="mixed_float16")`) reaches
    it.

    The rule: a mixer already in the block's policy is kept as it is; one
    without weights whose policy is the global default
    (`keras.config.dtype_policy()`) adopts the block's; any other is
    refused (another policy, or weights made in another policy). A mixer
    made with an explicit `dtype` equal to the global default cannot be told
    apart from one made without `dtype`, so it adopts the block's policy
    too. A mixer never runs in a policy other than its block's."""
    if mixer.dtype_policy.name == policy.name:
        return mixer
    # A stateless mixer is built from the start; one with weights has them in its policy's dtype.
    if mixer.weights or mixer.dtype_policy.name != keras.config.dtype_policy().name:
        raise ValueError(
            f"The token mixer {mixer.name!r} has dtype policy {mixer.dtype_policy.name!r}, but block "
            f"{block_name!r} has {policy.name!r}. Create the mixer without a `dtype` (the block then gives "
            f"it its own) or with dtype={policy.name!r}, and hand it to the block before it is built."
        )
    # The mixer's own sublayers (made in its `__init__`, still unbuilt) create
    # their variables from their policy when built, so they change too.
    for layer in mixer._flatten_layers(include_self=True):
        layer.dtype_policy = policy
    return mixer


_POOL_SIZE_ERROR = (
    "`pool_size` configures the 'pool' token mixer only. Received: "
    "token_mixer={!r} with a pool_size. Drop `pool_size`, or configure the "
    "mixer layer you pass instead."
)
