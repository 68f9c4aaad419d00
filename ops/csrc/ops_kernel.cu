// CUDA kernels for upfirdn2d and bias + leaky ReLU, plus CPU emulations that run the very same
// per-element code (ops_math.cuh) so the index math can be tested without a GPU.
//
// Inputs are validated and made contiguous by the binding (ops.cpp); here we only launch.

// Deliberately light includes: ATen/cuda/CUDAContext.h would drag in cuBLAS/cuSPARSE headers,
// which minimal CUDA toolkits (nvcc + cudart only) do not ship, and slows the build down.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "ops_math.cuh"

namespace styleclip_ops {

namespace {

constexpr int kThreads = 256;

// Grid-stride launches: cap the grid so huge tensors do not need a huge grid.
inline unsigned int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535 * 8)));
}

// One thread per output sample; consecutive threads take consecutive ox so that both loads and
// stores are mostly coalesced. The (small) FIR kernel is staged once per block in shared memory
// because every thread reads all of its taps.
template <typename scalar_t, typename acc_t>
__global__ void upfirdn2d_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ x,
                                 const acc_t* __restrict__ kern, UpFirDnParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];  // 16: fine for float and double
  acc_t* k_s = reinterpret_cast<acc_t*>(smem_raw);
  const int taps = p.kh * p.kw;
  for (int t = threadIdx.x; t < taps; t += blockDim.x) k_s[t] = kern[t];
  __syncthreads();

  const int64_t plane_out = static_cast<int64_t>(p.out_h) * p.out_w;
  const int64_t plane_in = static_cast<int64_t>(p.in_h) * p.in_w;
  const int64_t total = p.planes * plane_out;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t nc = idx / plane_out;
    const int64_t rem = idx - nc * plane_out;
    const int oy = static_cast<int>(rem / p.out_w);
    const int ox = static_cast<int>(rem - static_cast<int64_t>(oy) * p.out_w);
    out[idx] = static_cast<scalar_t>(
        upfirdn_point<scalar_t, acc_t>(x + nc * plane_in, k_s, p, oy, ox));
  }
}

// mode 0: out = leaky(x + bias[c]) * scale          (a = x, b = unused)
// mode 1: out = g * d leaky/d pre (from saved out)   (a = g, b = saved output)
template <typename scalar_t, typename acc_t>
__global__ void bias_act_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ a,
                                const scalar_t* __restrict__ b, const scalar_t* __restrict__ bias,
                                int64_t total, int64_t channels, int64_t inner, acc_t slope,
                                acc_t scale, int mode) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t v = static_cast<acc_t>(a[idx]);
    if (mode == 0) {
      if (bias != nullptr) v += static_cast<acc_t>(bias[(idx / inner) % channels]);
      out[idx] = static_cast<scalar_t>(leaky_forward<acc_t>(v, slope, scale));
    } else {
      out[idx] = static_cast<scalar_t>(
          leaky_backward<acc_t>(v, static_cast<acc_t>(b[idx]), slope, scale));
    }
  }
}

UpFirDnParams make_params(const at::Tensor& x, const at::Tensor& kernel, int up, int down,
                          int px0, int px1, int py0, int py1) {
  UpFirDnParams p;
  p.planes = x.size(0) * x.size(1);
  p.in_h = static_cast<int>(x.size(2));
  p.in_w = static_cast<int>(x.size(3));
  p.kh = static_cast<int>(kernel.size(0));
  p.kw = static_cast<int>(kernel.size(1));
  p.up = up;
  p.down = down;
  p.px0 = px0;
  p.py0 = py0;
  // Floor division of a possibly negative numerator, as Python's // in the reference.
  const auto floordiv = [](int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); };
  p.out_h = static_cast<int>(floordiv(int64_t(p.in_h) * up + py0 + py1 - p.kh, down) + 1);
  p.out_w = static_cast<int>(floordiv(int64_t(p.in_w) * up + px0 + px1 - p.kw, down) + 1);
  TORCH_CHECK(p.out_h > 0 && p.out_w > 0, "upfirdn2d: empty output (", p.out_h, "x", p.out_w,
              "); the padded input is smaller than the kernel");
  return p;
}

}  // namespace

// x: [N, C, H, W] contiguous CUDA; kernel: [kh, kw] contiguous, dtype = accumulation type.
at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& kernel, int up, int down,
                          int px0, int px1, int py0, int py1) {
  const c10::cuda::CUDAGuard guard(x.device());
  const UpFirDnParams p = make_params(x, kernel, up, down, px0, px1, py0, py1);
  at::Tensor out = at::empty({x.size(0), x.size(1), p.out_h, p.out_w}, x.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const size_t smem = sizeof(acc_t) * p.kh * p.kw;
    upfirdn2d_kernel<scalar_t, acc_t><<<grid_for(total), kThreads, smem, stream>>>(
        out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), kernel.data_ptr<acc_t>(), p);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// a: [N, C, ...] contiguous CUDA; b: same shape (mode 1) or undefined; bias: [C] or undefined.
at::Tensor bias_act_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias,
                         double slope, double scale, int mode) {
  const c10::cuda::CUDAGuard guard(a.device());
  at::Tensor out = at::empty_like(a);
  const int64_t total = a.numel();
  if (total == 0) return out;
  const int64_t channels = a.size(1);
  const int64_t inner = channels == 0 ? 1 : total / (a.size(0) * channels);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "bias_act_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    bias_act_kernel<scalar_t, acc_t><<<grid_for(total), kThreads, 0, stream>>>(
        out.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(),
        b.defined() ? b.data_ptr<scalar_t>() : nullptr,
        bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, total, channels, inner,
        static_cast<acc_t>(slope), static_cast<acc_t>(scale), mode);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ---- CPU emulation: same per-element functions, plain loops (for tests without a GPU). ----

at::Tensor upfirdn2d_host(const at::Tensor& x, const at::Tensor& kernel, int up, int down,
                          int px0, int px1, int py0, int py1) {
  const UpFirDnParams p = make_params(x, kernel, up, down, px0, px1, py0, py1);
  at::Tensor out = at::empty({x.size(0), x.size(1), p.out_h, p.out_w}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "upfirdn2d_host", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const acc_t* kp = kernel.data_ptr<acc_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    int64_t idx = 0;
    for (int64_t nc = 0; nc < p.planes; ++nc)
      for (int oy = 0; oy < p.out_h; ++oy)
        for (int ox = 0; ox < p.out_w; ++ox)
          op[idx++] = static_cast<scalar_t>(upfirdn_point<scalar_t, acc_t>(
              xp + nc * int64_t(p.in_h) * p.in_w, kp, p, oy, ox));
  });
  return out;
}

at::Tensor bias_act_host(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias,
                         double slope, double scale, int mode) {
  at::Tensor out = at::empty_like(a);
  const int64_t total = a.numel();
  if (total == 0) return out;
  const int64_t channels = a.size(1);
  const int64_t inner = channels == 0 ? 1 : total / (a.size(0) * channels);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "bias_act_host", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    const scalar_t* biasp = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    const acc_t sl = static_cast<acc_t>(slope), sc = static_cast<acc_t>(scale);
    for (int64_t idx = 0; idx < total; ++idx) {
      acc_t v = static_cast<acc_t>(ap[idx]);
      if (mode == 0) {
        if (biasp != nullptr) v += static_cast<acc_t>(biasp[(idx / inner) % channels]);
        op[idx] = static_cast<scalar_t>(leaky_forward<acc_t>(v, sl, sc));
      } else {
        op[idx] = static_cast<scalar_t>(
            leaky_backward<acc_t>(v, static_cast<acc_t>(bp[idx]), sl, sc));
      }
    }
  });
  return out;
}

}  // namespace styleclip_ops
