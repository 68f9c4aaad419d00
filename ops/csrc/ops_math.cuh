// Per-element math shared by the CUDA kernels and their host-side emulation.
//
// Everything here is __host__ __device__ so that the exact index arithmetic the GPU runs can
// also be run on the CPU (see *_host in ops_kernel.cu) and checked against ops/reference.py on
// machines without a GPU.
#pragma once

#ifdef __CUDACC__
#define OPS_HD __host__ __device__ __forceinline__
#else
#define OPS_HD inline
#endif

#include <cstdint>

namespace styleclip_ops {

// Geometry of one upfirdn2d call (all in elements; pads may be negative = crop).
struct UpFirDnParams {
  int64_t planes;           // N * C
  int in_h, in_w;           // H, W
  int out_h, out_w;         // (H*up + py0 + py1 - kh) / down + 1, same for x
  int up, down;
  int px0, py0;             // only the leading pads matter: trailing ones only set out_h/out_w
  int kh, kw;
};

// First tap index t >= 0 of the (flipped-kernel) correlation window that lands on a real input
// sample, given u0 = position of tap 0 in the zero-upsampled signal. Real samples sit at u % up
// == 0 (zeros are inserted AFTER each sample), u >= 0.
OPS_HD int first_tap(int u0, int up) {
  if (u0 < 0) return -u0;  // u = 0 is a real sample and is aligned
  const int r = u0 % up;
  return r == 0 ? 0 : up - r;
}

// One output sample of upfirdn2d: y[oy, ox] = sum_{i,j} xpad_up[oy*down + i, ox*down + j]
// * k[kh-1-i, kw-1-j]  (true convolution = correlation with the flipped kernel). Only taps that
// hit real (non-inserted, non-padded) samples are visited, so the cost is ~kh*kw/up^2.
//   plane: [in_h, in_w] contiguous input plane;  kern: [kh, kw] contiguous, NOT flipped.
template <typename scalar_t, typename acc_t>
OPS_HD acc_t upfirdn_point(const scalar_t* plane, const acc_t* kern, const UpFirDnParams& p,
                           int oy, int ox) {
  const int uy0 = oy * p.down - p.py0;
  const int ux0 = ox * p.down - p.px0;
  const int i0 = first_tap(uy0, p.up);
  const int j0 = first_tap(ux0, p.up);
  acc_t acc = acc_t(0);
  for (int i = i0; i < p.kh; i += p.up) {
    const int iy = (uy0 + i) / p.up;  // exact: uy0 + i >= 0 and divisible by up
    if (iy >= p.in_h) break;           // beyond the input: trailing zeros / padding
    const scalar_t* row = plane + static_cast<int64_t>(iy) * p.in_w;
    const acc_t* krow = kern + static_cast<int64_t>(p.kh - 1 - i) * p.kw + (p.kw - 1);
    for (int j = j0; j < p.kw; j += p.up) {
      const int ix = (ux0 + j) / p.up;
      if (ix >= p.in_w) break;
      acc += static_cast<acc_t>(row[ix]) * krow[-j];
    }
  }
  return acc;
}

// leaky_relu(v) * scale, computed in the accumulation type.
template <typename acc_t>
OPS_HD acc_t leaky_forward(acc_t v, acc_t slope, acc_t scale) {
  return (v > acc_t(0) ? v : v * slope) * scale;
}

// d out / d pre-activation times g, recovered from the saved OUTPUT: for slope >= 0,
// sign(out) == sign(pre) * sign(scale), so "pre > 0" <=> out * scale > 0. (pre == 0 gives the
// slope branch, as F.leaky_relu's gradient does.) Callers guarantee slope >= 0.
template <typename acc_t>
OPS_HD acc_t leaky_backward(acc_t g, acc_t out, acc_t slope, acc_t scale) {
  return out * scale > acc_t(0) ? g * scale : g * scale * slope;
}

}  // namespace styleclip_ops
