// A naive NCHW batch-norm backward in float, the way a first CPU kernel is written:
// reads x.bin, dy.bin and gamma.bin (float32, as `bncheck vectors` writes them),
// all little-endian and row-major; writes dx.bin, dgamma.bin and dbeta.bin (float32) next to them.
//
//   g++ -O2 -o bn_backward bn_backward.cpp
//   ./bn_backward DIR N C H W [eps]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

template <typename T>
static std::vector<T> load(const std::string& path, size_t count) {
  std::vector<T> v(count);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f || std::fread(v.data(), sizeof(T), count, f) != count) {
    std::fprintf(stderr, "cannot read %zu values from %s\n", count, path.c_str());
    std::exit(2);
  }
  std::fclose(f);
  return v;
}

static void save(const std::string& path, const std::vector<float>& v) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(v.data(), sizeof(float), v.size(), f) != v.size()) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::exit(2);
  }
  std::fclose(f);
}

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: %s DIR N C H W [eps]\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const size_t N = std::atoi(argv[2]), C = std::atoi(argv[3]), H = std::atoi(argv[4]), W = std::atoi(argv[5]);
  const float eps = argc > 6 ? std::atof(argv[6]) : 1e-5f;
  const size_t S = H * W, R = N * S;
  auto x = load<float>(dir + "/x.bin", N * C * S), dy = load<float>(dir + "/dy.bin", N * C * S);
  auto gamma = load<float>(dir + "/gamma.bin", C);
  std::vector<float> dx(N * C * S), dgamma(C), dbeta(C);
  for (size_t c = 0; c < C; ++c) {
    float mean = 0, var = 0, sum_dy = 0, dot = 0;
    for (size_t n = 0; n < N; ++n)
      for (size_t s = 0; s < S; ++s) mean += x[(n * C + c) * S + s];
    mean /= R;
    for (size_t n = 0; n < N; ++n)
      for (size_t s = 0; s < S; ++s) {
        const float d = x[(n * C + c) * S + s] - mean;
        var += d * d;
        sum_dy += dy[(n * C + c) * S + s];
        dot += dy[(n * C + c) * S + s] * d;
      }
    const float invstd = 1.0f / std::sqrt(var / R + eps);
    dbeta[c] = sum_dy;
    dgamma[c] = dot * invstd;
    for (size_t n = 0; n < N; ++n)
      for (size_t s = 0; s < S; ++s) {
        const size_t i = (n * C + c) * S + s;
        const float xhat = (x[i] - mean) * invstd;
        dx[i] = gamma[c] * invstd * (dy[i] - sum_dy / R - xhat * dgamma[c] / R);
      }
  }
  save(dir + "/dx.bin", dx);
  save(dir + "/dgamma.bin", dgamma);
  save(dir + "/dbeta.bin", dbeta);
  return 0;
}
