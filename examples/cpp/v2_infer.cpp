// A C++ batch-norm backward checked over the KServe v2 protocol with binary tensors:
// no HTTP library, no JSON library, no base64; one POSIX socket. The float32 tensors go
// as raw little-endian bytes after a JSON header (the binary tensor data extension).
//
//   g++ -O2 -std=c++17 -o v2_infer v2_infer.cpp
//   ./v2_infer http://127.0.0.1:8000 [--bug]     (--bug zeroes dx of channel 3)
//
// Prints "bncheck v2: PASSED" or "bncheck v2: FAILED (dx channels 3)"; exit 0 when
// the answer came back (whatever the verdict), 2 when it did not.
#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

static const int N = 8, C = 16, H = 6, W = 6;

// A naive NCHW backward in float, accumulating in float (what a first GPU kernel does).
static void bn_backward(const std::vector<float>& x, const std::vector<float>& dy, float eps,
                        std::vector<float>& dx, std::vector<float>& dgamma, std::vector<float>& dbeta) {
  const int HW = H * W;
  const float R = float(N * HW);
  for (int c = 0; c < C; ++c) {
    float sum = 0, sq = 0;
    for (int n = 0; n < N; ++n)
      for (int i = 0; i < HW; ++i) sum += x[(n * C + c) * HW + i];
    const float mean = sum / R;
    for (int n = 0; n < N; ++n)
      for (int i = 0; i < HW; ++i) {
        const float d = x[(n * C + c) * HW + i] - mean;
        sq += d * d;
      }
    const float invstd = 1.0f / std::sqrt(sq / R + eps);
    float sdy = 0, sdyx = 0;
    for (int n = 0; n < N; ++n)
      for (int i = 0; i < HW; ++i) {
        const int k = (n * C + c) * HW + i;
        sdy += dy[k];
        sdyx += dy[k] * (x[k] - mean) * invstd;
      }
    dgamma[c] = sdyx;
    dbeta[c] = sdy;
    for (int n = 0; n < N; ++n)  // gamma = 1
      for (int i = 0; i < HW; ++i) {
        const int k = (n * C + c) * HW + i;
        const float xhat = (x[k] - mean) * invstd;
        dx[k] = invstd * (dy[k] - sdy / R - xhat * sdyx / R);
      }
  }
}

static std::string tensor(const char* name, size_t bytes, const char* shape) {
  return std::string("{\"name\":\"") + name + "\",\"datatype\":\"FP32\",\"shape\":" + shape +
         ",\"parameters\":{\"binary_data_size\":" + std::to_string(bytes) + "}}";
}

static bool send_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t k = send(fd, p, n, 0);
    if (k <= 0) return false;
    p += k;
    n -= size_t(k);
  }
  return true;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s http://HOST:PORT [--bug]\n", argv[0]);
    return 2;
  }
  std::string url = argv[1];
  const bool bug = argc > 2 && std::strcmp(argv[2], "--bug") == 0;
  if (url.rfind("http://", 0) == 0) url = url.substr(7);
  const size_t colon = url.find(':');
  const std::string host = url.substr(0, colon);
  const std::string port = colon == std::string::npos ? "80" : url.substr(colon + 1);

  // Inputs: a fixed pseudo-random x and dy; the kernel's dx and dgamma are the candidates.
  const size_t count = size_t(N) * C * H * W;
  std::vector<float> x(count), dy(count), dx(count), dgamma(C), dbeta(C);
  uint32_t s = 12345;
  for (size_t i = 0; i < count; ++i) {
    s = s * 1664525u + 1013904223u;
    x[i] = float(s >> 8) / float(1 << 24) * 4.0f - 1.0f;
    s = s * 1664525u + 1013904223u;
    dy[i] = float(s >> 8) / float(1 << 24) * 2.0f - 1.0f;
  }
  bn_backward(x, dy, 1e-5f, dx, dgamma, dbeta);
  if (bug)
    for (int n = 0; n < N; ++n)
      for (int i = 0; i < H * W; ++i) dx[(n * C + 3) * H * W + i] = 0;

  const size_t big = count * 4, small = size_t(C) * 4;
  const char* shape4 = "[8,16,6,6]";
  const std::string header =
      "{\"inputs\":[" + tensor("x", big, shape4) + "," + tensor("dy", big, shape4) + "," +
      tensor("candidate_dx", big, shape4) + "," + tensor("candidate_dgamma", small, "[16]") +
      "],\"outputs\":[{\"name\":\"passed\",\"parameters\":{\"binary_data\":false}},"
      "{\"name\":\"report\",\"parameters\":{\"binary_data\":true}}],"
      "\"parameters\":{\"finite_difference\":\"stats\"}}";
  const size_t body = header.size() + 3 * big + small;
  const std::string request = "POST /v2/models/qianfeng/infer HTTP/1.1\r\nHost: " + host +
                              "\r\nContent-Type: application/octet-stream\r\nContent-Length: " +
                              std::to_string(body) + "\r\nInference-Header-Content-Length: " +
                              std::to_string(header.size()) + "\r\nConnection: close\r\n\r\n" + header;

  addrinfo hints{}, *addr = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &addr) != 0) {
    std::fprintf(stderr, "cannot resolve %s\n", host.c_str());
    return 2;
  }
  const int fd = socket(addr->ai_family, addr->ai_socktype, addr->ai_protocol);
  if (fd < 0 || connect(fd, addr->ai_addr, addr->ai_addrlen) != 0) {
    std::fprintf(stderr, "cannot connect to %s:%s (is the server running? make serve)\n", host.c_str(),
                 port.c_str());
    return 2;
  }
  freeaddrinfo(addr);
  bool ok = send_all(fd, request.data(), request.size()) &&
            send_all(fd, reinterpret_cast<const char*>(x.data()), big) &&  // little-endian hosts
            send_all(fd, reinterpret_cast<const char*>(dy.data()), big) &&
            send_all(fd, reinterpret_cast<const char*>(dx.data()), big) &&
            send_all(fd, reinterpret_cast<const char*>(dgamma.data()), small);
  std::string answer;
  char buf[65536];
  for (ssize_t k; ok && (k = recv(fd, buf, sizeof buf, 0)) > 0;) answer.append(buf, size_t(k));
  close(fd);

  const size_t end = answer.find("\r\n\r\n");
  if (!ok || end == std::string::npos) {
    std::fprintf(stderr, "no answer from the server\n");
    return 2;
  }
  std::string head = answer.substr(0, end);
  const std::string content = answer.substr(end + 4);
  for (char& ch : head) ch = char(std::tolower(static_cast<unsigned char>(ch)));  // header names: any case
  if (head.find(" 200 ") == std::string::npos) {  // errors are {"error": "..."}
    std::fprintf(stderr, "%s\n%s\n", head.substr(0, head.find("\r\n")).c_str(), content.c_str());
    return 2;
  }
  // The JSON header, then the report's bytes: a 4-byte length, then the /v1 JSON report.
  const size_t at = head.find("inference-header-content-length: ");
  const size_t json_len = std::stoul(head.substr(at + 33));
  const std::string json = content.substr(0, json_len);
  const bool passed = json.find("\"data\":[true]") != std::string::npos;
  uint32_t report_len = 0;
  std::memcpy(&report_len, content.data() + json_len, 4);
  const std::string report = content.substr(json_len + 4, report_len);
  if (passed) {
    std::printf("bncheck v2: PASSED\n");
  } else {
    // the candidate block's dx: "failed_channels":"3"
    const size_t cand = report.find("\"candidate\"");
    const size_t fc = report.find("\"failed_channels\":\"", report.find("\"dx\"", cand)) + 19;
    std::printf("bncheck v2: FAILED (dx channels %s)\n", report.substr(fc, report.find('"', fc) - fc).c_str());
  }
  return 0;
}
