#include "meridian/transcode/transcoder.h"

namespace meridian::transcode {

namespace {
constexpr size_t k_prefix = 5;
}  // namespace

std::string grpc_frame(std::string_view message) {
  std::string frame;
  frame.reserve(k_prefix + message.size());
  auto n = static_cast<uint32_t>(message.size());
  frame.push_back('\0');
  frame.push_back(static_cast<char>(n >> 24));
  frame.push_back(static_cast<char>(n >> 16));
  frame.push_back(static_cast<char>(n >> 8));
  frame.push_back(static_cast<char>(n));
  frame.append(message.data(), message.size());
  return frame;
}

void frame_reader::check_prefix() {
  if (buffer_.size() - offset_ < k_prefix) return;
  auto byte = [&](size_t i) { return static_cast<uint8_t>(buffer_[offset_ + i]); };
  uint32_t length = (uint32_t{byte(1)} << 24) | (uint32_t{byte(2)} << 16) |
                    (uint32_t{byte(3)} << 8) | uint32_t{byte(4)};
  if (byte(0) == 1) {
    compressed_ = true;
    error_ = "compressed gRPC message, and no decompression is configured";
  } else if (byte(0) != 0) {
    error_ = "bad gRPC frame flag " + std::to_string(byte(0));
  } else if (length > max_message_) {
    error_ = "gRPC message of " + std::to_string(length) + " bytes exceeds the limit of " +
             std::to_string(max_message_);
  }
  if (!error_.empty()) {
    buffer_.clear();
    buffer_.shrink_to_fit();
    offset_ = 0;
  }
}

bool frame_reader::feed(std::string_view bytes) {
  if (!error_.empty()) return false;
  if (offset_ > 0 && offset_ == buffer_.size()) {
    buffer_.clear();
    offset_ = 0;
  }
  buffer_.append(bytes.data(), bytes.size());
  check_prefix();
  return error_.empty();
}

bool frame_reader::next(std::string* message) {
  if (!error_.empty()) return false;
  check_prefix();
  if (!error_.empty() || buffer_.size() - offset_ < k_prefix) return false;
  auto byte = [&](size_t i) { return static_cast<uint8_t>(buffer_[offset_ + i]); };
  size_t length =
      (size_t{byte(1)} << 24) | (size_t{byte(2)} << 16) | (size_t{byte(3)} << 8) | size_t{byte(4)};
  if (buffer_.size() - offset_ < k_prefix + length) return false;
  message->assign(buffer_, offset_ + k_prefix, length);
  offset_ += k_prefix + length;
  if (offset_ == buffer_.size()) {
    buffer_.clear();
    offset_ = 0;
  } else if (offset_ > buffer_.size() / 2) {
    buffer_.erase(0, offset_);  // keep the consumed part from piling up
    offset_ = 0;
  }
  check_prefix();
  return true;
}

}  // namespace meridian::transcode
