// What the page uses of livekit-client; esbuild bundles it with its dependencies.
export { Room, RoomEvent, Track, ConnectionState, DisconnectReason } from 'livekit-client';
