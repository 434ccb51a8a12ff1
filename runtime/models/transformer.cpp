// transformer: a small decoder-only (GPT-style) language model.
//
//   tokens [B, T] -> token embedding + learned positional embedding (+ dropout)
//                 -> n_layers x pre-LayerNorm block:
//                      x = x + dropout(causal_self_attention(ln1(x)))
//                      x = x + dropout(fc2(gelu(fc1(ln2(x)))))
//                 -> final LayerNorm -> head: logits [B, T, vocab]
//
// Attention is written out (qkv projection, masked softmax) rather than taken from
// torch::nn::MultiheadAttention or scaled_dot_product_attention: those differ between
// LibTorch 1.13 and 2.x, and the parameter names here are part of the checkpoint format.
//
// Parameter names: tok_embedding.weight, pos_embedding.weight,
// blocks.<i>.{ln1,attn.qkv,attn.out,ln2,mlp.fc1,mlp.fc2}.{weight,bias}, norm.{weight,bias},
// head.{weight,bias}. No buffers: the causal mask is built per forward.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "collectives/error.h"
#include "runtime/models/builtin_models.h"

namespace ddp::detail {
namespace {

torch::Tensor maybe_dropout(const torch::Tensor& x, double p, bool training) {
  return p > 0.0 ? torch::dropout(x, p, training) : x;
}

class CausalSelfAttention final : public torch::nn::Module {
 public:
  CausalSelfAttention(int64_t d_model, int64_t n_heads, double dropout)
      : n_heads_(n_heads), head_dim_(d_model / n_heads), dropout_(dropout) {
    qkv_ = register_module("qkv", torch::nn::Linear(d_model, 3 * d_model));
    out_ = register_module("out", torch::nn::Linear(d_model, d_model));
  }

  // x [B, T, D] -> [B, T, D]; position t attends to positions <= t only.
  torch::Tensor forward(const torch::Tensor& x) {
    const int64_t batch = x.size(0), time = x.size(1), d_model = x.size(2);
    // [B, T, 3D] -> 3 x [B, H, T, head_dim]
    auto split = qkv_->forward(x).view({batch, time, 3, n_heads_, head_dim_}).permute({2, 0, 3, 1, 4});
    torch::Tensor q = split[0], k = split[1], v = split[2];
    torch::Tensor scores =
        torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(head_dim_));
    // true above the diagonal: the future, which must not be seen
    torch::Tensor future = torch::ones({time, time}, x.options().dtype(torch::kBool)).triu(1);
    scores = scores.masked_fill(future, -std::numeric_limits<float>::infinity());
    torch::Tensor weights = maybe_dropout(torch::softmax(scores, -1), dropout_, is_training());
    torch::Tensor y = torch::matmul(weights, v)  // [B, H, T, head_dim]
                          .transpose(1, 2)
                          .contiguous()
                          .view({batch, time, d_model});
    return out_->forward(y);
  }

 private:
  int64_t n_heads_, head_dim_;
  double dropout_;
  torch::nn::Linear qkv_{nullptr}, out_{nullptr};
};

class FeedForward final : public torch::nn::Module {
 public:
  FeedForward(int64_t d_model, int64_t d_ff) {
    fc1_ = register_module("fc1", torch::nn::Linear(d_model, d_ff));
    fc2_ = register_module("fc2", torch::nn::Linear(d_ff, d_model));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2_->forward(torch::gelu(fc1_->forward(x))); }

 private:
  torch::nn::Linear fc1_{nullptr}, fc2_{nullptr};
};

class Block final : public torch::nn::Module {
 public:
  Block(int64_t d_model, int64_t n_heads, int64_t d_ff, double dropout) : dropout_(dropout) {
    ln1_ = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d_model})));
    attn_ = register_module("attn", std::make_shared<CausalSelfAttention>(d_model, n_heads, dropout));
    ln2_ = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d_model})));
    mlp_ = register_module("mlp", std::make_shared<FeedForward>(d_model, d_ff));
  }

  torch::Tensor forward(torch::Tensor x) {
    x = x + maybe_dropout(attn_->forward(ln1_->forward(x)), dropout_, is_training());
    x = x + maybe_dropout(mlp_->forward(ln2_->forward(x)), dropout_, is_training());
    return x;
  }

 private:
  double dropout_;
  torch::nn::LayerNorm ln1_{nullptr}, ln2_{nullptr};
  std::shared_ptr<CausalSelfAttention> attn_;
  std::shared_ptr<FeedForward> mlp_;
};

class Transformer final : public Model {
 public:
  Transformer(const ModelConfig& config, const DatasetInfo& data)
      : max_len_(data.input_shape[0]), dropout_(config.dropout) {
    const int64_t vocab = data.num_outputs, d_model = config.d_model;
    tok_embedding_ = register_module("tok_embedding", torch::nn::Embedding(vocab, d_model));
    pos_embedding_ = register_module("pos_embedding", torch::nn::Embedding(max_len_, d_model));
    blocks_ = register_module("blocks", torch::nn::ModuleList());
    for (int64_t i = 0; i < config.n_layers; ++i) {
      block_list_.push_back(
          std::make_shared<Block>(d_model, config.n_heads, config.d_ff, config.dropout));
      blocks_->push_back(block_list_.back());
    }
    norm_ = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d_model})));
    head_ = register_module("head", torch::nn::Linear(d_model, vocab));
  }

  // x: int64 tokens [B, T] with T <= the context length; returns logits [B, T, vocab].
  torch::Tensor forward(const torch::Tensor& x) override {
    if (x.dim() != 2 || x.size(1) > max_len_) {
      throw Error(ErrorKind::kInvalidArgument,
                  "transformer: expected tokens [B, T] with T <= " + std::to_string(max_len_) +
                      ", got " + shape_string(x.sizes().vec()));
    }
    const int64_t time = x.size(1);
    torch::Tensor positions = torch::arange(time, x.options().dtype(torch::kLong));
    torch::Tensor h = tok_embedding_->forward(x) + pos_embedding_->forward(positions);
    h = maybe_dropout(h, dropout_, is_training());
    for (const auto& block : block_list_) h = block->forward(h);
    return head_->forward(norm_->forward(h));
  }

 private:
  int64_t max_len_;
  double dropout_;
  torch::nn::Embedding tok_embedding_{nullptr}, pos_embedding_{nullptr};
  torch::nn::ModuleList blocks_{nullptr};         // owns and names the blocks
  std::vector<std::shared_ptr<Block>> block_list_;  // the same blocks, typed
  torch::nn::LayerNorm norm_{nullptr};
  torch::nn::Linear head_{nullptr};
};

void require_positive(const char* key, int64_t value) {
  if (value <= 0) {
    throw Error(ErrorKind::kInvalidArgument,
                std::string("model.") + key + " must be positive, got " + std::to_string(value));
  }
}

}  // namespace

std::shared_ptr<Model> make_transformer(const ModelConfig& config, const DatasetInfo& data) {
  if (data.task != Task::kLanguageModel) {
    throw Error(ErrorKind::kInvalidArgument,
                std::string("needs a language-modelling dataset (data.name: tokens), got task ") +
                    task_name(data.task) + " (use model.name: mlp or cnn)");
  }
  if (data.input_shape.size() != 1) {
    throw Error(ErrorKind::kInvalidArgument,
                "needs token sequences with input_shape {T}, the dataset has " +
                    shape_string(data.input_shape));
  }
  check_common(config, data);
  require_positive("d_model", config.d_model);
  require_positive("n_layers", config.n_layers);
  require_positive("n_heads", config.n_heads);
  require_positive("d_ff", config.d_ff);
  if (config.d_model % config.n_heads != 0) {
    throw Error(ErrorKind::kInvalidArgument,
                "model.d_model (" + std::to_string(config.d_model) +
                    ") must be divisible by model.n_heads (" + std::to_string(config.n_heads) + ")");
  }
  return std::make_shared<Transformer>(config, data);
}

}  // namespace ddp::detail
