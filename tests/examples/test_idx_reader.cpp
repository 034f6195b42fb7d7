// The IDX reader on tiny files the test writes itself (gzip with zlib, and plain), and its
// errors: missing file (naming the Debian package), bad magic, truncated and overlong data,
// image/label count mismatch.
#include <unistd.h>
#include <zlib.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "common/idx_reader.hpp"

using namespace kfopt_examples;
namespace fs = std::filesystem;

namespace {

std::vector<std::uint8_t> idx_bytes(std::uint8_t type, const std::vector<std::uint32_t>& dims,
                                    const std::vector<std::uint8_t>& data) {
  std::vector<std::uint8_t> bytes{0, 0, type, static_cast<std::uint8_t>(dims.size())};
  for (std::uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8)
      bytes.push_back(static_cast<std::uint8_t>(d >> shift));
  }
  bytes.insert(bytes.end(), data.begin(), data.end());
  return bytes;
}

void write_gz(const fs::path& path, const std::vector<std::uint8_t>& bytes) {
  gzFile f = gzopen(path.string().c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) ==
          static_cast<int>(bytes.size()));
  gzclose(f);
}

void write_plain(const fs::path& path, const std::vector<std::uint8_t>& bytes) {
  std::FILE* f = std::fopen(path.string().c_str(), "wb");
  REQUIRE(f != nullptr);
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

// A fresh folder under the system temp dir, removed at the end of the test. The name holds
// the process id: ctest runs test cases as parallel processes.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name) {
    path = fs::temp_directory_path() /
           ("kfopt_idx_test_" + name + "_" + std::to_string(static_cast<long>(getpid())));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

}  // namespace

TEST_CASE("IDX: a gzip image file and its labels are read and scaled to [0, 1]",
          "[examples][idx]") {
  TempDir dir("read");
  // 3 images of 2x2 pixels.
  const std::vector<std::uint8_t> pixels{0, 255, 51, 102, 1, 2, 3, 4, 255, 255, 0, 0};
  write_gz(dir.path / "img.gz", idx_bytes(0x08, {3, 2, 2}, pixels));
  write_gz(dir.path / "lab.gz", idx_bytes(0x08, {3}, {7, 0, 9}));

  const IdxArray raw = read_idx((dir.path / "img.gz").string(), 3);
  CHECK(raw.dims == std::vector<std::uint32_t>{3, 2, 2});
  CHECK(raw.data == pixels);

  const auto set =
      load_idx_images<double>((dir.path / "img.gz").string(), (dir.path / "lab.gz").string());
  REQUIRE(set.images.rows() == 3);
  REQUIRE(set.images.cols() == 4);
  CHECK(set.images(0, 1) == Approx(1.0));
  CHECK(set.images(0, 2) == Approx(0.2));
  CHECK(set.images(1, 3) == Approx(4.0 / 255.0));  // row-major: example 1, pixel 3
  CHECK(set.labels == std::vector<int>{7, 0, 9});

  // An uncompressed file reads the same (zlib passes plain data through).
  write_plain(dir.path / "img.idx", idx_bytes(0x08, {3, 2, 2}, pixels));
  CHECK(read_idx((dir.path / "img.idx").string(), 3).data == pixels);
}

TEST_CASE("IDX: malformed files are refused with the file's name", "[examples][idx]") {
  TempDir dir("malformed");
  const std::string path = (dir.path / "bad.gz").string();

  write_gz(path, idx_bytes(0x0D, {2}, {1, 2}));  // type 0x0D = float, not unsigned bytes
  CHECK_THROWS_WITH(read_idx(path, 1), Catch::Contains("bad IDX magic") && Catch::Contains(path));

  write_gz(path, idx_bytes(0x08, {2, 2, 2}, std::vector<std::uint8_t>(8)));
  CHECK_THROWS_WITH(read_idx(path, 1), Catch::Contains("0x00000801"));  // 3 dims, 1 expected

  write_gz(path, idx_bytes(0x08, {4}, {1, 2, 3}));  // one byte short
  CHECK_THROWS_WITH(read_idx(path, 1), Catch::Contains("truncated"));

  write_gz(path, idx_bytes(0x08, {2}, {1, 2, 3}));  // one byte too many
  CHECK_THROWS_WITH(read_idx(path, 1), Catch::Contains("more data"));

  write_gz(path, idx_bytes(0x08, {0}, {}));
  CHECK_THROWS_WITH(read_idx(path, 1), Catch::Contains("is 0"));

  CHECK_THROWS_WITH(read_idx((dir.path / "absent.gz").string(), 1), Catch::Contains("absent.gz"));

  write_gz(dir.path / "img.gz", idx_bytes(0x08, {2, 1, 1}, {1, 2}));
  write_gz(dir.path / "lab.gz", idx_bytes(0x08, {3}, {1, 2, 3}));
  CHECK_THROWS_WITH(
      load_idx_images<float>((dir.path / "img.gz").string(), (dir.path / "lab.gz").string()),
      Catch::Contains("2 images") && Catch::Contains("3 labels"));
  write_gz(dir.path / "lab.gz", idx_bytes(0x08, {2}, {1, 12}));
  CHECK_THROWS_WITH(
      load_idx_images<float>((dir.path / "img.gz").string(), (dir.path / "lab.gz").string()),
      Catch::Contains("label 12"));
}

TEST_CASE("Fashion-MNIST: loads the four files from --data DIR, names the package when missing",
          "[examples][idx]") {
  TempDir dir("fashion");
  const std::vector<std::uint8_t> two_images(2 * 28 * 28, 128);
  write_gz(dir.path / "train-images-idx3-ubyte.gz", idx_bytes(0x08, {2, 28, 28}, two_images));
  write_gz(dir.path / "train-labels-idx1-ubyte.gz", idx_bytes(0x08, {2}, {3, 4}));
  write_gz(dir.path / "t10k-images-idx3-ubyte.gz",
           idx_bytes(0x08, {1, 28, 28}, std::vector<std::uint8_t>(28 * 28, 0)));
  // The last file is still missing.
  CHECK_THROWS_WITH(load_fashion_mnist<double>(dir.path.string()),
                    Catch::Contains("t10k-labels-idx1-ubyte.gz") &&
                        Catch::Contains("apt-get install dataset-fashion-mnist"));

  write_gz(dir.path / "t10k-labels-idx1-ubyte.gz", idx_bytes(0x08, {1}, {5}));
  const auto data = load_fashion_mnist<float>(dir.path.string());
  CHECK(data.train.size() == 2);
  CHECK(data.test.size() == 1);
  CHECK(data.train.images.cols() == 784);
  CHECK(data.train.images(1, 500) == Approx(128.0f / 255.0f));
  CHECK(data.test.labels == std::vector<int>{5});

  // Images of the wrong size are refused.
  write_gz(dir.path / "t10k-images-idx3-ubyte.gz",
           idx_bytes(0x08, {1, 27, 28}, std::vector<std::uint8_t>(27 * 28, 0)));
  CHECK_THROWS_WITH(load_fashion_mnist<float>(dir.path.string()), Catch::Contains("28x28"));
}
