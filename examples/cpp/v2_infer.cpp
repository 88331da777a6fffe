// A C++ batch-norm backward checked over the KServe v2 protocol with binary tensors:
// no HTTP library, no JSON library, no base64; one POSIX socket. The float32 tensors go
// as raw little-endian bytes after a JSON header (the binary tensor data extension).
// With --shm (a server on this host started with BNCHECK_CLIENT_SHM=true) they do not go
// at all: the kernel reads and writes a POSIX shared-memory object, registers it with the
// server as a region, and the infer names where each tensor is (system shared memory).
//
//   g++ -O2 -std=c++17 -o v2_infer v2_infer.cpp
//   ./v2_infer http://127.0.0.1:8000 [--bug] [--shm]     (--bug zeroes dx of channel 3)
//
// Prints "bncheck v2: PASSED" or "bncheck v2: FAILED (dx channels 3)"; exit 0 when
// the answer came back (whatever the verdict), 2 when it did not.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

static const int N = 8, C = 16, H = 6, W = 6;

// A naive NCHW backward in float, accumulating in float (what a first GPU kernel does).
static void bn_backward(const float* x, const float* dy, float eps, float* dx, float* dgamma, float* dbeta) {
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

// The same tensor, in the registered region "bn" at byte `at`.
static std::string in_region(const char* name, size_t bytes, size_t at, const char* shape) {
  return std::string("{\"name\":\"") + name + "\",\"datatype\":\"FP32\",\"shape\":" + shape +
         ",\"parameters\":{\"shared_memory_region\":\"bn\",\"shared_memory_byte_size\":" +
         std::to_string(bytes) + ",\"shared_memory_offset\":" + std::to_string(at) + "}}";
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

struct Answer {
  bool ok = false;
  std::string head, content;  // header names in lower case
};

// One HTTP/1.1 request on a fresh connection: the head and `header` (JSON), then the raw parts.
static Answer post(const std::string& host, const std::string& port, const std::string& path,
                   const std::string& header, const std::vector<std::pair<const void*, size_t>>& parts,
                   size_t header_length) {
  Answer a;
  size_t body = header.size();
  for (const auto& p : parts) body += p.second;
  std::string request = "POST " + path + " HTTP/1.1\r\nHost: " + host + "\r\nContent-Type: " +
                        (parts.empty() ? "application/json" : "application/octet-stream") +
                        "\r\nContent-Length: " + std::to_string(body) + "\r\nConnection: close\r\n";
  if (header_length) request += "Inference-Header-Content-Length: " + std::to_string(header_length) + "\r\n";
  request += "\r\n" + header;
  addrinfo hints{}, *addr = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &addr) != 0) {
    std::fprintf(stderr, "cannot resolve %s\n", host.c_str());
    return a;
  }
  const int fd = socket(addr->ai_family, addr->ai_socktype, addr->ai_protocol);
  if (fd < 0 || connect(fd, addr->ai_addr, addr->ai_addrlen) != 0) {
    std::fprintf(stderr, "cannot connect to %s:%s (is the server running? make serve)\n", host.c_str(),
                 port.c_str());
    freeaddrinfo(addr);
    return a;
  }
  freeaddrinfo(addr);
  bool ok = send_all(fd, request.data(), request.size());
  for (const auto& p : parts) ok = ok && send_all(fd, static_cast<const char*>(p.first), p.second);  // little-endian
  std::string answer;
  char buf[65536];
  for (ssize_t k; ok && (k = recv(fd, buf, sizeof buf, 0)) > 0;) answer.append(buf, size_t(k));
  close(fd);
  const size_t end = answer.find("\r\n\r\n");
  if (!ok || end == std::string::npos) {
    std::fprintf(stderr, "no answer from the server\n");
    return a;
  }
  a.head = answer.substr(0, end);
  a.content = answer.substr(end + 4);
  for (char& ch : a.head) ch = char(std::tolower(static_cast<unsigned char>(ch)));  // header names: any case
  a.ok = a.head.find(" 200 ") != std::string::npos;
  if (!a.ok)  // errors are {"error": "..."}
    std::fprintf(stderr, "%s %s\n%s\n", path.c_str(), a.head.substr(0, a.head.find("\r\n")).c_str(),
                 a.content.c_str());
  return a;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s http://HOST:PORT [--bug] [--shm]\n", argv[0]);
    return 2;
  }
  std::string url = argv[1];
  bool bug = false, shm = false;
  for (int i = 2; i < argc; ++i) {
    bug = bug || std::strcmp(argv[i], "--bug") == 0;
    shm = shm || std::strcmp(argv[i], "--shm") == 0;
  }
  if (url.rfind("http://", 0) == 0) url = url.substr(7);
  const size_t colon = url.find(':');
  const std::string host = url.substr(0, colon);
  const std::string port = colon == std::string::npos ? "80" : url.substr(colon + 1);

  // x, dy, and the kernel's dx, dgamma, dbeta: in this process's memory, or (--shm) one after
  // another in a POSIX shared-memory object the server reads too.
  const size_t count = size_t(N) * C * H * W;
  const size_t big = count * 4, small = size_t(C) * 4, total = 3 * big + 2 * small;
  std::vector<float> local;
  float* mem = nullptr;
  const std::string key = "/bncheck_cpp_example_" + std::to_string(getpid());
  if (shm) {
    const int fd = shm_open(key.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0 || ftruncate(fd, off_t(total)) != 0) {
      std::fprintf(stderr, "cannot create shared memory %s\n", key.c_str());
      return 2;
    }
    mem = static_cast<float*>(mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    close(fd);
    if (mem == MAP_FAILED) return 2;
  } else {
    local.resize(total / 4);
    mem = local.data();
  }
  float *x = mem, *dy = x + count, *dx = dy + count, *dgamma = dx + count, *dbeta = dgamma + C;

  // Inputs: a fixed pseudo-random x and dy; the kernel's dx and dgamma are the candidates.
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

  const char* shape4 = "[8,16,6,6]";
  const std::string outputs =
      "],\"outputs\":[{\"name\":\"passed\",\"parameters\":{\"binary_data\":false}},"
      "{\"name\":\"report\",\"parameters\":{\"binary_data\":true}}],"
      "\"parameters\":{\"finite_difference\":\"stats\"}}";
  Answer a;
  if (shm) {
    const std::string region = "{\"key\":\"" + key + "\",\"offset\":0,\"byte_size\":" + std::to_string(total) + "}";
    if (post(host, port, "/v2/systemsharedmemory/region/bn/register", region, {}, 0).ok) {
      const std::string header = "{\"inputs\":[" + in_region("x", big, 0, shape4) + "," +
                                 in_region("dy", big, big, shape4) + "," + in_region("candidate_dx", big, 2 * big, shape4) +
                                 "," + in_region("candidate_dgamma", small, 3 * big, "[16]") + outputs;
      a = post(host, port, "/v2/models/qianfeng/infer", header, {}, 0);
      post(host, port, "/v2/systemsharedmemory/region/bn/unregister", "", {}, 0);
    }
    munmap(mem, total);
    shm_unlink(key.c_str());
  } else {
    const std::string header = "{\"inputs\":[" + tensor("x", big, shape4) + "," + tensor("dy", big, shape4) + "," +
                               tensor("candidate_dx", big, shape4) + "," + tensor("candidate_dgamma", small, "[16]") +
                               outputs;
    a = post(host, port, "/v2/models/qianfeng/infer", header,
             {{x, big}, {dy, big}, {dx, big}, {dgamma, small}}, header.size());
  }
  if (!a.ok) return 2;

  // The JSON header, then the report's bytes: a 4-byte length, then the /v1 JSON report.
  const size_t at = a.head.find("inference-header-content-length: ");
  const size_t json_len = std::stoul(a.head.substr(at + 33));
  const std::string json = a.content.substr(0, json_len);
  const bool passed = json.find("\"data\":[true]") != std::string::npos;
  uint32_t report_len = 0;
  std::memcpy(&report_len, a.content.data() + json_len, 4);
  const std::string report = a.content.substr(json_len + 4, report_len);
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
