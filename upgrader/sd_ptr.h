// Owning holders for sd-bus and sd-event objects, as systemd's _cleanup_ attributes are:
// an early return can't leak a message or a slot, or skip closing the bus.
#pragma once

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include <utility>

namespace kleap {

// One reference to a T, dropped with Unref. Move-only.
template <class T, T* (*Unref)(T*)>
class SdPtr {
 public:
  SdPtr() = default;
  // Adopts a reference the caller owns (what sd_*_new and sd_*_ref return).
  explicit SdPtr(T* p) : p_(p) {}
  ~SdPtr() { reset(); }
  SdPtr(SdPtr&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  SdPtr& operator=(SdPtr&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = std::exchange(o.p_, nullptr);
    }
    return *this;
  }
  SdPtr(const SdPtr&) = delete;
  SdPtr& operator=(const SdPtr&) = delete;

  T* get() const { return p_; }
  // For the out-parameter of sd_*_new and friends: drops what is held first.
  T** put() {
    reset();
    return &p_;
  }
  [[nodiscard]] T* release() { return std::exchange(p_, nullptr); }
  void reset() {
    if (p_) Unref(p_);
    p_ = nullptr;
  }
  explicit operator bool() const { return p_ != nullptr; }

 private:
  T* p_ = nullptr;
};

using SdBus = SdPtr<sd_bus, sd_bus_flush_close_unref>;
using SdEvent = SdPtr<sd_event, sd_event_unref>;
using SdEventSource = SdPtr<sd_event_source, sd_event_source_unref>;
using SdMessage = SdPtr<sd_bus_message, sd_bus_message_unref>;
using SdSlot = SdPtr<sd_bus_slot, sd_bus_slot_unref>;
using SdCreds = SdPtr<sd_bus_creds, sd_bus_creds_unref>;

// A new reference to m, for a reply that is sent later (after polkit answers).
inline SdMessage RefMessage(sd_bus_message* m) {
  return SdMessage(sd_bus_message_ref(m));
}

// An sd_bus_error that frees itself.
class SdError {
 public:
  SdError() = default;
  ~SdError() { sd_bus_error_free(&e_); }
  SdError(const SdError&) = delete;
  SdError& operator=(const SdError&) = delete;
  sd_bus_error* get() { return &e_; }
  const sd_bus_error* get() const { return &e_; }
  const sd_bus_error* operator->() const { return &e_; }

 private:
  sd_bus_error e_ = SD_BUS_ERROR_NULL;
};

}  // namespace kleap
