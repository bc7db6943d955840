/**
 * The browser SDK of the chat platform: `ChatClient` for unary calls over grpc-web, and
 * `ChatSession` for the live stream (reconnect, resume, de-duplication, acks, heartbeats).
 * Push notifications: `ChatClient`'s push calls, and `subscribeWebPush` for a browser's
 * service worker. The generated protobuf types are re-exported here; the full generated
 * modules are under `chat-sdk/gen/*`.
 */
export {
  ChatClient,
  grpcWebTransport,
  type ChatClientOptions,
  type Credentials,
  type HistoryPage,
  type Page,
  type RetryOptions,
} from "./client.js";
export {
  ChatSession,
  KEEP_ALIVE_MARGIN_MS,
  MAX_EXHAUSTED_SEND_ATTEMPTS,
  MAX_UNKNOWN_SEND_ATTEMPTS,
  type ConnectionState,
  type PendingSend,
  type SessionBackend,
  type SessionEvent,
  type SessionEventOf,
  type SessionEventType,
  type SessionOptions,
} from "./session.js";
export { newClientMsgId, sendMessage, type Target } from "./messages.js";
export { Cursors, type CursorsJSON } from "./cursors.js";
export { ReceiptBook, deriveStatus, type DeliveryStatus, type Watermarks } from "./receipts.js";
export { AckBatch } from "./acks.js";
export { Backoff, fullJitter, type BackoffOptions, type Random } from "./backoff.js";
export {
  base64UrlToBytes,
  bytesToBase64Url,
  pushModeName,
  pushModeValue,
  webPushFields,
  type PushModeName,
  type PushSettings,
  type WebPushFields,
  type WebPushSubscriptionLike,
} from "./push.js";
export {
  subscribeWebPush,
  unsubscribeWebPush,
  type PushClient,
  type PushRegistrationLike,
  type PushSubscriptionLike,
} from "./webpush.js";
export { ChatError, Code, codeFromName, codeName, isRetryableCode, type ChatErrorKind } from "./errors.js";

export { AuthService } from "./gen/chat/v1/auth_pb.js";
export { ChatService, type Conversation } from "./gen/chat/v1/chat_pb.js";
export { PushMode, PushService, type PushTarget, type WebPushTarget, type WebhookTarget } from "./gen/chat/v1/push_pb.js";
export {
  ConversationKind,
  MessageStatus,
  type Cursor,
  type Message,
  type Presence,
  type Receipt,
  type SendAck,
  type Typing,
  type User,
  type Welcome,
} from "./gen/chat/v1/types_pb.js";
